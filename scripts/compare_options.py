"""Run the recipe and each model option on the demo's synthetic data with several seeds, and
tabulate test score, cross-validation score, exam-label AUCs among positive exams and time.

    python scripts/compare_options.py WORKSPACE [--seeds 0 1 2] [--options recipe gru ...]
        [--jobs N] [--no-compile] [--deadline S] [--table docs_table.md] [--cnn-set K=V]

One data set (the demo's: ``run_demo.sh``'s sizes, seed 0) is made once in WORKSPACE/data and
shared; each seed s gets WORKSPACE/seed_<s> (its own output/ and dump/), where seed 0 keeps the
configs' seeds (the demo's runs) and seed s > 0 trains every CNN and head with seeds
[42, 84, 126] + 1000 s. Head-only options reuse the recipe's BCE CNNs and dumps of the same
seed. Runs are scheduled as a graph (CNN fold -> dump fold -> head fold -> inference), JOBS at a
time; finished runs are skipped on a rerun, as the stages do. Results go to
WORKSPACE/results.json and, with --table, to a markdown table.
"""
import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
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
# Stage-1/2/4 configs to run for the data before any option (the lung-cropped set only when a
# CNN variant reads it).
PREP = ("make_image", "make_csv", "make_npz")
CROP_VARIANTS = {"lungcrop", "combined"}


class Graph:
    """Commands with dependencies, run ``jobs`` at a time in priority order; a failed command's
    dependants are skipped. Each command's wall time and return code go to ``log_path``."""

    def __init__(self, jobs, deadline, log_path, on_done=None):
        self.jobs, self.deadline, self.log_path = jobs, deadline, log_path
        self.on_done = on_done or (lambda name: None)
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
        return name, rc, time.time() - start, log

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
                    name, rc, secs, log = f.result()
                    del running[f]
                    self.state[name] = "ok" if rc == 0 else "failed"
                    self._record(name, rc, secs, log)
                    self.on_done(name)

    def _record(self, name, rc, secs, log):
        line = {"task": name, "rc": rc, "seconds": round(secs, 1), "log": str(log)}
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
        tail = "" if rc == 0 else " FAILED: " + Path(log).read_text(errors="replace")[-300:]
        print(f"[{time.strftime('%H:%M:%S')}] {name} rc={rc} {secs:.0f}s{tail}", flush=True)


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


def prepare(ws, configs, options, args):
    """The shared data set and its stage 1, 2 and 4 outputs (kept when already there)."""
    py = sys.executable
    data = ws / "data"
    cmds = [[py, SRC / "make_synthetic_data.py", data, "--n-train", args.n_train, "--n-test",
             args.n_test, "--slices", *args.slices, "--matrix", args.matrix,
             "--positive-fraction", "0.5", "--seed", "0"]]
    crop = any(CROP_VARIANTS & set(OPTIONS[o][0]) for o in options)
    for stage in PREP:
        cmds.append([py, SRC / f"{stage}.py", "-c", configs / f"{stage}.yml"])
        if crop:
            cmds.append([py, SRC / f"{stage}.py", "-c", configs / f"{stage}.yml", "jpeg_crop=lung"])
    for cmd in cmds:
        print("$", " ".join(map(str, cmd)), flush=True)
        subprocess.run([str(c) for c in cmd], cwd=ws, check=True)
    for s in args.seeds:
        d = ws / f"seed_{s}"
        d.mkdir(exist_ok=True)
        if not (d / "data").exists():
            (d / "data").symlink_to("../data")


def this_machine():
    """Where the runs' times were measured: they compare only within one machine."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU, {os.cpu_count()} cores"


def collect(ws, options, seeds, log_path, machine):
    """results[option][seed] = test/cv scores, priors, AUCs among positives, seconds."""
    times = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            r = json.loads(line)
            if r["rc"] == 0:  # the first success made the outputs; later ones skipped them
                times.setdefault(r["task"], r["seconds"])
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
                seconds=option_seconds(times, o, s), machine=machine)
    return out


def option_seconds(times, option, seed):
    """Summed run times of the option's own stages: CNN + dump (its CNN variants) and
    head + inference."""
    cnns, pairs, _ = OPTIONS[option]
    cnn = sum(times.get(f"s{seed}/{k}_{c}_f{f}", 0) for c in cnns for k in ("cnn", "dump")
              for f in FOLDS)
    head = sum(times.get(f"s{seed}/rnn_{r}_f{f}", 0) for r, _ in pairs for f in FOLDS)
    return {"cnn_dump": cnn, "head_inference": head + times.get(f"s{seed}/inference_{option}", 0)}


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workspace", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    p.add_argument("--configs", type=Path, default=REPO / "configs" / "demo")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--no-compile", action="store_true",
                   help="train.compile=false for the CNNs (on a GPU: no minute-long warm-ups)")
    p.add_argument("--deadline", type=float, default=float("inf"),
                   help="start no run after this many seconds; tabulate what finished")
    p.add_argument("--n-train", default="240")
    p.add_argument("--n-test", default="40")
    p.add_argument("--slices", nargs=2, default=["8", "12"])
    p.add_argument("--matrix", default="256")
    p.add_argument("--table", type=Path, help="write the markdown table here")
    p.add_argument("--add-results", type=Path, nargs="*", default=[], metavar="JSON",
                   help="results.json of other sweeps (other seeds, e.g. from another machine) "
                        "to tabulate with this one's")
    p.add_argument("--cnn-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra override for every CNN run (repeatable)")
    args = p.parse_args(argv)

    ws = args.workspace.resolve()
    ws.mkdir(parents=True, exist_ok=True)
    configs = args.configs.resolve()
    os.environ.setdefault("WANDB_MODE", "disabled")
    start = time.time()
    prepare(ws, configs, args.options, args)
    log_path, machine = ws / "runs.jsonl", this_machine()

    def report(name=None):  # after every scoring run, so a stopped sweep still leaves a table
        if name is None or "/score_" in name:
            results = collect(ws, args.options, args.seeds, log_path, machine)
            for extra in args.add_results:  # this sweep's seeds win over another's same seeds
                for o, per_seed in json.loads(extra.read_text()).items():
                    if o in OPTIONS:
                        results.setdefault(o, {})
                        for s, r in per_seed.items():
                            results[o].setdefault(int(s), r)
                results = {o: dict(sorted(results[o].items())) for o in OPTIONS if o in results}
            (ws / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            if args.table:
                args.table.write_text(table(results, machine))
            return results

    g = Graph(args.jobs, args.deadline - (time.time() - start), log_path, report)
    extra = list(args.cnn_set) + (["train.compile=false"] if args.no_compile else [])
    for i, s in enumerate(args.seeds):
        for j, o in enumerate(args.options):
            add_option(g, ws, configs, o, s, extra, prio=i * 100 + j)
    state = g.run()
    print(f"\ntimes: {machine}\n" + table(report(), machine))
    bad = sorted(n for n, st in state.items() if st != "ok")
    print(f"{len(state) - len(bad)} runs ok, {len(bad)} failed or skipped "
          f"{bad[:5]}; {time.time() - start:.0f} s")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
