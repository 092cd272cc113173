"""Checks on pages driven in headless Chromium."""


def slice_drawn(browser):
    """Whether the panes show a slice: drawn once its image has decoded, the lung-window canvas
    lights up."""
    return browser.execute_script(
        "const c = document.querySelector('canvas.slice'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let s = 0; for (let i = 0; i < d.length; i += 4)"
        " s += d[i]; return s > 0;")
