"""Run the recipe and each model option on the demo's synthetic data with several seeds, and
tabulate test score, cross-validation score, exam-label AUCs among positive exams and time.

    python scripts/compare_options.py WORKSPACE [--profile demo] [--seeds 0 1 2]
        [--options recipe gru ...] [--jobs N] [--no-compile] [--deadline S]
        [--table docs_table.md] [--cnn-set K=V] [--dry-run]

One data set (a profile of configs/profiles.yml, the demo's by default; ``--n-train`` etc.
override its sizes) is made once in WORKSPACE/data and shared; each seed s gets
WORKSPACE/seed_<s> (its own output/ and dump/), where seed 0 keeps the configs' seeds (the
demo's runs) and seed s > 0 trains every CNN and head with seeds [42, 84, 126] + 1000 s.
Head-only options reuse the recipe's BCE CNNs and dumps of the same seed. Runs are scheduled as
a graph (CNN fold -> dump fold -> head fold -> inference), JOBS at a time; a rerun skips
finished runs, as the stages do. Results go to WORKSPACE/results.json (a rerun with fewer
options or seeds keeps the others) and, with --table, to a markdown table headed by the data
profile, the machine and the wall time. ``--dry-run`` prints what it would run, and does nothing.
"""
import argparse
import concurrent.futures as cf
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
sys.path.insert(0, str(SRC))  # the data profiles live in the package
from rsna_pe.synthetic.profiles import DEFAULT_PROFILE, describe, profile_names, with_overrides  # noqa: E402

SEED_STEP = 1000
BASE_SEEDS = (42, 84, 126)
FOLDS = (0, 1, 2)
# The exam labels a head must tell apart among positive exams (location, RV/LV, chronicity).
POSITIVE_LABELS = ("rightsided_pe", "leftsided_pe", "central_pe", "rv_lv_ratio_gte_1",
                   "rv_lv_ratio_lt_1", "chronic_pe", "acute_and_chronic_pe")

# option: (CNN variants it trains, (head config, CNN variant) pairs it ensembles, what it is).
# Config names are rexnet200_<name>.yml in configs/{train_cnn,dump_embeddings,train_rnn}.
OPTIONS = {
    "recipe_bce": (["bce"], [("bce", "bce")], "the recipe's BCE half, 3 pairs (reference)"),
    "examlabels": (["examlabels"], [("examlabels", "examlabels")],
                   "CNN: exam labels as extra slice targets, logits to the head"),
    "combined": (["combined"], [("combined", "combined")],
                 "neighbours + lung crop + exam labels, metric-weighted head"),
    "combined_pool": (["combined"], [("combined_pool", "combined")],
                      "combined, its head adds the CNN's logits pooled over the series"),
    "neighbours": (["neighbours"], [("neighbours", "neighbours")],
                   "CNN input: PE window of slices z-1, z, z+1"),
    "lungcrop": (["lungcrop"], [("lungcrop", "lungcrop")], "stage 1: crop to the lungs"),
    "gru": (["bce"], [("bce_gru", "bce")], "head: GRU instead of LSTM"),
    "transformer": (["bce"], [("bce_transformer", "bce")], "head: transformer encoder"),
    "neighbourdiff": (["bce"], [("bce_neighbourdiff", "bce")],
                      "head: features + differences to neighbouring slices"),
    "metricloss": (["bce"], [("bce_metricloss", "bce")], "head: metric-weighted loss"),
    "recipe": (["bce", "focal"], [("bce", "bce"), ("focal", "focal")],
               "the recipe: BCE and focal CNNs, LSTM heads, 6 pairs"),
}
# Stage-1/2/4 configs run for the data first (the lung-cropped set when a CNN variant reads it).
PREP = ("make_image", "make_csv", "make_npz")
CROP_VARIANTS = {"lungcrop", "combined"}


class Graph:
    """Commands with dependencies, run ``jobs`` at a time in priority order; a failed command's
    dependants are skipped. Each command's wall time, start and end, return code and the
    ``machine`` it ran on go to ``log_path``."""

    def __init__(self, jobs, deadline, log_path, on_done=None, machine=None):
        self.jobs, self.deadline, self.log_path = jobs, deadline, log_path
        self.on_done, self.machine = on_done or (lambda name: None), machine
        self.tasks, self.state = {}, {}
        # Each run gets its share of the cores (read by the stages), as run_each gives them.
        self.env = dict(os.environ, RSNA_PE_CORES=str(max(1, (os.cpu_count() or 1) // jobs)))

    def add(self, name, cmd, cwd, deps=(), priority=0):
        if name not in self.tasks:
            self.tasks[name] = dict(cmd=[str(c) for c in cmd], cwd=cwd, deps=list(deps),
                                    priority=priority)
        return name

    def _ready(self):
        out = [n for n, t in self.tasks.items() if n not in self.state
               and all(self.state.get(d) == "ok" for d in t["deps"])]
        return sorted(out, key=lambda n: self.tasks[n]["priority"])

    def _skip_broken(self):
        changed = True
        while changed:
            changed = False
            for n, t in self.tasks.items():
                if n not in self.state and any(self.state.get(d) in ("failed", "skipped")
                                               for d in t["deps"]):
                    self.state[n], changed = "skipped", True

    def _run(self, name):
        t = self.tasks[name]
        log = Path(t["cwd"]) / "output" / "logs" / f"{name.replace('/', '_')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(log, "w") as fh:
            rc = subprocess.call(t["cmd"], cwd=t["cwd"], stdout=fh, stderr=subprocess.STDOUT,
                                 env=self.env)
        return name, rc, start, log

    def run(self):
        t0, running = time.time(), {}
        with cf.ThreadPoolExecutor(self.jobs) as pool:
            while True:
                self._skip_broken()
                if time.time() - t0 < self.deadline:
                    for n in self._ready()[:self.jobs - len(running)]:
                        if n not in running.values():
                            running[pool.submit(self._run, n)] = n
                            self.state[n] = "running"
                if not running:
                    for n in self.tasks:
                        self.state.setdefault(n, "not started")
                    return self.state
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    name, rc, start, log = f.result()
                    del running[f]
                    self.state[name] = "ok" if rc == 0 else "failed"
                    self._record(name, rc, start, log)
                    self.on_done(name)

    def _record(self, name, rc, start, log):
        end = time.time()
        record_run(self.log_path, name, rc, start, end, log, self.machine)
        secs = end - start
        tail = "" if rc == 0 else " FAILED: " + Path(log).read_text(errors="replace")[-300:]
        print(f"[{time.strftime('%H:%M:%S')}] {name} rc={rc} {secs:.0f}s{tail}", flush=True)


def record_run(log_path, name, rc, start, end, log, machine):
    """A line of runs.jsonl: return code, seconds, start and end (Unix time), log, machine."""
    line = {"task": name, "rc": rc, "seconds": round(end - start, 1), "start": round(start, 1),
            "end": round(end, 1), "log": str(log), "machine": machine}
    with open(log_path, "a") as fh:
        fh.write(json.dumps(line) + "\n")


def seed_overrides(seed):
    if seed == 0:
        return []  # the configs' own seeds: seed 0 is the demo
    return ["seeds=[" + ",".join(str(s + SEED_STEP * seed) for s in BASE_SEEDS) + "]"]


def add_option(g, ws, configs, option, seed, cnn_extra, prio):
    """The option's CNN, dump, head, inference and scoring commands for one seed."""
    py, cwd = sys.executable, ws / f"seed_{seed}"
    cnns, pairs, _ = OPTIONS[option]
    heads = []
    for rnn, cnn in pairs:
        for k in FOLDS:
            c = g.add(f"s{seed}/cnn_{cnn}_f{k}", [py, SRC / "train_rsna.py", "-c",
                      configs / "train_cnn" / f"rexnet200_{cnn}.yml", f"dataset.fold={k}",
                      *seed_overrides(seed), *cnn_extra], cwd, priority=prio)
            d = g.add(f"s{seed}/dump_{cnn}_f{k}", [py, SRC / "dump_embeddings.py", "-c",
                      configs / "dump_embeddings" / f"rexnet200_{cnn}.yml", f"dataset.fold={k}"],
                      cwd, [c], prio)
            heads.append(g.add(f"s{seed}/rnn_{rnn}_f{k}", [py, SRC / "train_rsna.py", "-c",
                               configs / "train_rnn" / f"rexnet200_{rnn}.yml",
                               f"dataset.fold={k}", *seed_overrides(seed)], cwd, [d], prio))
    assert set(cnns) == {c for _, c in pairs}
    models = "[" + ",".join(f"{{cnn: rexnet200_{c}, rnn: rexnet200_{r}}}" for r, c in pairs) + "]"
    inf = g.add(f"s{seed}/inference_{option}", [py, SRC / "inference.py", "-c",
                configs / "inference.yml", f"models={models}",
                f"output_dir=output/inference/{option}"], cwd, heads, prio)
    score_dir = f"output/scores/{option}"
    sub = f"output/inference/{option}/submission.csv"
    oofs = [f"output/train_rnn/rexnet200_{r}/fold_{k}/oof.csv" for r, _ in pairs for k in FOLDS]
    g.add(f"s{seed}/score_{option}", ["bash", "-c",
          f"mkdir -p {score_dir} && {py} {SRC / 'evaluate.py'} --labels data/test_labels.csv {sub}"
          f" --prior data/train.csv --json {score_dir}/test.json && {py} {SRC / 'evaluate.py'}"
          f" --labels $({py} {SRC / 'make_csv.py'} -c {configs / 'make_csv.yml'} --print-output)"
          f" {' '.join(oofs)} --prior data/train.csv --json {score_dir}/cv.json"], cwd, [inf], prio)


OVERRIDES = ("n_train", "n_test", "slices", "matrix", "slice_spacing")  # of the profile's data


def data_profile(args):
    """(label, values, generator arguments) of the data set: the profile with the command
    line's overrides."""
    return with_overrides(args.profile, {k: getattr(args, k) for k in OVERRIDES})


def prep_commands(ws, configs, options, args):
    """(name, command) of the shared data set and its stage 1, 2 and 4 outputs (each kept when
    already there)."""
    py = sys.executable
    cmds = [("data/make_synthetic_data",
             [py, SRC / "make_synthetic_data.py", ws / "data", *data_profile(args)[2]])]
    crop = any(CROP_VARIANTS & set(OPTIONS[o][0]) for o in options)
    for stage in PREP:
        cmds.append((f"data/{stage}", [py, SRC / f"{stage}.py", "-c", configs / f"{stage}.yml"]))
        if crop:
            cmds.append((f"data/{stage}_lungcrop", [py, SRC / f"{stage}.py", "-c",
                                                    configs / f"{stage}.yml", "jpeg_crop=lung"]))
    return [(name, [str(c) for c in cmd]) for name, cmd in cmds]


def prepare(ws, cmds, seeds, log_path, machine):
    """Run the data commands (timed in runs.jsonl) and give each seed its folder."""
    for name, cmd in cmds:
        print("$", " ".join(cmd), flush=True)
        start, rc = time.time(), subprocess.run(cmd, cwd=ws).returncode
        if rc:  # the command printed why
            print(f"error: {name} exited {rc}: {' '.join(cmd)}", file=sys.stderr)
            sys.exit(2)
        record_run(log_path, name, 0, start, time.time(), "", machine)
    for s in seeds:
        d = ws / f"seed_{s}"
        d.mkdir(exist_ok=True)
        if not (d / "data").exists():
            (d / "data").symlink_to("../data")


def _cpu_name():
    info = Path("/proc/cpuinfo")
    names = [x.split(":", 1)[1].strip() for x in (info.read_text().splitlines() if info.exists()
                                                   else []) if x.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def this_machine():
    """Where the runs' times were measured: they compare only within one machine."""
    import torch

    if torch.cuda.is_available():  # the sweep's runs share GPU 0
        return torch.cuda.get_device_name(0)
    return f"CPU {_cpu_name()}, {os.cpu_count()} cores"


def read_runs(log_path):
    text = Path(log_path).read_text() if Path(log_path).exists() else ""
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def first_successes(log_path):
    """{task: its first successful line}: that run made the outputs, later ones skipped them."""
    out = {}
    for r in read_runs(log_path):
        if r["rc"] == 0:
            out.setdefault(r["task"], r)
    return out


def wall_seconds(log_path):
    """Seconds in which at least one recorded run or data step was going: a sweep's wall time
    over all its invocations, the gaps between them left out."""
    total, covered = 0.0, float("-inf")
    for a, b in sorted((r["start"], r["end"]) for r in read_runs(log_path) if "start" in r):
        total += max(0.0, b - max(a, covered))  # the part not yet counted
        covered = max(covered, b)
    return total


def option_tasks(option, seed):
    """(CNN and dump runs, head and inference runs) of an option's seed: what its times sum."""
    cnns, pairs, _ = OPTIONS[option]
    cnn = [f"s{seed}/{k}_{c}_f{f}" for c in cnns for k in ("cnn", "dump") for f in FOLDS]
    head = [f"s{seed}/rnn_{r}_f{f}" for r, _ in pairs for f in FOLDS]
    return cnn, head + [f"s{seed}/inference_{option}"]


def option_seconds(runs, option, seed):
    """Summed run times of the option's own CNN + dump runs and head + inference runs."""
    cnn, head = option_tasks(option, seed)
    secs = lambda names: sum(runs[n]["seconds"] for n in names if n in runs)  # noqa: E731
    return {"cnn_dump": secs(cnn), "head_inference": secs(head)}


def option_machine(runs, option, seed, machine):
    """The machine the option's runs were made on (lines without one: this one)."""
    names = [n for part in option_tasks(option, seed) for n in part if n in runs]
    return " + ".join(sorted({runs[n].get("machine") or machine for n in names}) or [machine])


def collect(ws, options, seeds, log_path, machine, profile=None):
    """results[option][seed]: test/cv scores, priors, AUCs among positives, seconds, machine, data."""
    runs = first_successes(log_path)
    out = {}
    for o in options:
        for s in seeds:
            d = ws / f"seed_{s}" / "output" / "scores" / o
            if not (d / "cv.json").exists():
                continue
            test = json.loads((d / "test.json").read_text())["files"][0]
            cv = json.loads((d / "cv.json").read_text())["cross_validation"]
            out.setdefault(o, {})[s] = dict(
                test=test["score"], test_prior=test["prior_score"], cv=cv["score"],
                cv_prior=cv["prior_score"],
                auc_positive={k: cv["per_label"][k].get("auc_positive") for k in POSITIVE_LABELS},
                seconds=option_seconds(runs, o, s), machine=option_machine(runs, o, s, machine),
                profile=profile)
    return out


def merged_results(fresh, *older):
    """fresh over each of ``older`` results in turn; options in OPTIONS' order, seeds ascending."""
    results = {o: dict(per) for o, per in fresh.items()}
    for old in older:
        for o, per_seed in old.items():
            if o in OPTIONS:
                for s, r in per_seed.items():
                    results.setdefault(o, {}).setdefault(int(s), r)
    return {o: dict(sorted(results[o].items())) for o in OPTIONS if o in results}


def _ms(values, digits=4):
    v = np.asarray([x for x in values if x is not None], float)
    if not len(v):
        return "-"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"


def table(results, machine=None):
    """Markdown: one row per option, mean ± spread (population std) over the seeds run; the
    times only of the runs made on ``machine`` (all when None)."""
    short = ("right", "left", "central", "RV/LV≥1", "RV/LV<1", "chronic", "acute+chr")
    head = ["option", "seeds", "test", "test/prior", "CV", "CV/prior", *short,
            "CNN+dump s", "head+inf s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for o, per_seed in results.items():
        r = list(per_seed.values())
        ratio = lambda k: _ms([x[k] / x[k + "_prior"] for x in r], 2)  # noqa: E731
        aucs = [_ms([x["auc_positive"][k] for x in r], 2) for k in POSITIVE_LABELS]
        timed = [x for x in r if machine is None or x.get("machine") == machine]
        secs = [_ms([x["seconds"][k] for x in timed], 0) for k in ("cnn_dump", "head_inference")]
        rows.append("| " + " | ".join([o, str(len(r)), _ms([x["test"] for x in r]), ratio("test"),
                                       _ms([x["cv"] for x in r]), ratio("cv"), *aucs, *secs]) + " |")
    return "\n".join(rows) + "\n"


def table_header(label, prof, machine, wall, results):
    """What the table was measured on: the data profile, the machine, the wall time."""
    lines = [f"Data: profile `{label}` ({describe(prof)}).",
             f"Machine: {machine} (the time columns count only runs made on it). "
             f"Wall time of the sweep's runs: {wall:.0f} s ({wall / 3600:.1f} h), over all its "
             "invocations, gaps between them left out."]
    others = {str(r.get("profile")) for per in results.values() for r in per.values()} - {label}
    if others:
        lines.append(f"Some rows also hold results made on other data: {', '.join(sorted(others))}.")
    return "\n".join(lines) + "\n\n"


def build_graph(ws, configs, args, log_path, on_done=None, machine=None, deadline=None):
    """Every option's runs for every seed, in the order seeds x options."""
    deadline = args.deadline if deadline is None else deadline
    g = Graph(args.jobs, deadline, log_path, on_done, machine)
    extra = list(args.cnn_set) + (["train.compile=false"] if args.no_compile else [])
    for i, s in enumerate(args.seeds):
        for j, o in enumerate(args.options):
            add_option(g, ws, configs, o, s, extra, prio=i * 100 + j)
    return g


def print_plan(ws, configs, args, label, prof):
    """The dry run: the data commands and the runs, each marked done when runs.jsonl has its
    success (a rerun starts it, and its stage skips the finished work), nothing made."""
    done, g = first_successes(ws / "runs.jsonl"), build_graph(ws, configs, args, ws / "runs.jsonl")
    shown = lambda cmd: " ".join(cmd).replace(sys.executable, "python").replace(f"{REPO}/", "")  # noqa: E731
    print(f"plan for {ws} (dry run: nothing is made or started)")
    print(f"data: profile {label}: {describe(prof)}")
    for name, cmd in prep_commands(ws, configs, args.options, args):
        print(f"  [{'done' if name in done else 'to run'}] {name}: {shown(cmd)}")
    names = sorted(g.tasks, key=lambda n: g.tasks[n]["priority"])  # the order they start in
    print(f"{len(names)} runs, {args.jobs} at a time, seeds {args.seeds}, options {args.options}"
          f" ({sum(n in done for n in names)} done):")
    for n in names:
        t = g.tasks[n]
        after = f" (after {', '.join(t['deps'])})" if t["deps"] else ""
        print(f"  [{'done' if n in done else 'to run'}] {n}{after}: {shown(t['cmd'])}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workspace", type=Path)
    p.add_argument("--profile", default=DEFAULT_PROFILE, choices=profile_names(),
                   help="the data set, from configs/profiles.yml (default: the demo's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    p.add_argument("--configs", type=Path, default=REPO / "configs" / "demo")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--no-compile", action="store_true",
                   help="train.compile=false for the CNNs (on a GPU: no minute-long warm-ups)")
    p.add_argument("--deadline", type=float, default=float("inf"),
                   help="start no run after this many seconds; tabulate what finished")
    g = p.add_argument_group("overrides of the profile's data set")
    for flag, kind in (("--n-train", int), ("--n-test", int), ("--matrix", int),
                       ("--slice-spacing", float)):
        g.add_argument(flag, type=kind)
    g.add_argument("--slices", type=int, nargs=2, metavar=("MIN", "MAX"))
    p.add_argument("--table", type=Path, help="write the markdown table here")
    p.add_argument("--add-results", type=Path, nargs="*", default=[], metavar="JSON",
                   help="results.json of other sweeps (other seeds, e.g. from another machine) "
                        "to tabulate with this one's")
    p.add_argument("--cnn-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra override for every CNN run (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the data commands and runs it would start (and which are done)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    ws, configs = args.workspace.resolve(), args.configs.resolve()
    label, prof, _ = data_profile(args)
    if args.dry_run:
        print_plan(ws, configs, args, label, prof)
        return 0
    ws.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "disabled")
    start = time.time()
    log_path, machine = ws / "runs.jsonl", this_machine()
    prepare(ws, prep_commands(ws, configs, args.options, args), args.seeds, log_path, machine)
    results_path = ws / "results.json"

    def report(name=None):  # after every scoring run, so a stopped sweep still leaves a table
        if name is None or "/score_" in name:
            old = json.loads(results_path.read_text()) if results_path.exists() else {}
            results = merged_results(collect(ws, args.options, args.seeds, log_path, machine, label),
                                     *(json.loads(x.read_text()) for x in args.add_results), old)
            results_path.write_text(json.dumps(results, indent=2) + "\n")
            if args.table:
                args.table.write_text(table_header(label, prof, machine, wall_seconds(log_path),
                                                   results) + table(results, machine))
            return results

    g = build_graph(ws, configs, args, log_path, report, machine,
                    args.deadline - (time.time() - start))
    state = g.run()
    results = report()
    print("\n" + table_header(label, prof, machine, wall_seconds(log_path), results)
          + table(results, machine))
    bad = sorted(n for n, st in state.items() if st != "ok")
    print(f"{len(state) - len(bad)} runs ok, {len(bad)} failed or skipped "
          f"{bad[:5]}; {time.time() - start:.0f} s")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
