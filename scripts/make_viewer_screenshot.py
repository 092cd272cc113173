"""Screenshot of a study viewer (viewer.html) in headless Chromium, e.g. for the docs.

    python scripts/make_viewer_screenshot.py output/predict_study/viewer.html [--out fig/viewer.png]
        [--slice K] [--size 1280x860]

Needs Chromium and its driver (Debian: apt-get install chromium chromium-driver) and selenium
(requirements-dev.txt); the pipeline and its demo need neither.
"""
import argparse
import shutil
import sys
import time
from pathlib import Path


def open_chromium(width=1280, height=860):
    """A headless Chromium WebDriver (Debian's chromium and chromedriver from PATH)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chrome, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chrome and driver):
        raise SystemExit("chromium/chromedriver not installed: apt-get install chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.binary_location = chrome
    return webdriver.Chrome(service=Service(driver), options=opts)


def go_to_slice(browser, k):
    """Show slice ``k`` the way a user would: click its point on the probability curve."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, f"pt-{k}").click()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("viewer", type=Path, help="a viewer.html written by src/predict_study.py")
    p.add_argument("--out", type=Path, default=Path("fig/viewer.png"))
    p.add_argument("--slice", type=int, default=None, help="slice to show (default: the most probable)")
    p.add_argument("--size", default="1280x860", help="window size WIDTHxHEIGHT in px")
    args = p.parse_args(argv)
    if not args.viewer.is_file():
        sys.exit(f"error: {args.viewer}: not found")
    width, height = (int(v) for v in args.size.lower().split("x"))
    browser = open_chromium(width, height)
    try:
        browser.get(args.viewer.resolve().as_uri())
        if args.slice is not None:
            go_to_slice(browser, args.slice)
        time.sleep(0.5)  # images decode asynchronously after the click
        png = browser.get_screenshot_as_png()
    finally:
        browser.quit()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
