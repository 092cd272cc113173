"""scripts/compare_options.py: its run graph (order, failures, deadline) and its table."""
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

spec = importlib.util.spec_from_file_location("compare_options", REPO / "scripts" / "compare_options.py")
co = importlib.util.module_from_spec(spec)
spec.loader.exec_module(co)


def _graph(tmp_path, jobs=1, deadline=float("inf")):
    (tmp_path / "output").mkdir()
    return co.Graph(jobs, deadline, tmp_path / "runs.jsonl")


def _append(tmp_path, word):
    return [sys.executable, "-c", f"open('order.txt', 'a').write('{word} ')"]


def test_graph_runs_dependencies_first_and_in_priority_order(tmp_path):
    g = _graph(tmp_path)
    a = g.add("a", _append(tmp_path, "a"), tmp_path, priority=1)
    g.add("b", _append(tmp_path, "b"), tmp_path, [a], priority=0)
    g.add("c", _append(tmp_path, "c"), tmp_path, priority=0)
    state = g.run()
    assert state == {"a": "ok", "b": "ok", "c": "ok"}
    assert (tmp_path / "order.txt").read_text().split() == ["c", "a", "b"]
    runs = [json.loads(x) for x in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [r["task"] for r in runs] == ["c", "a", "b"] and all(r["rc"] == 0 for r in runs)


def test_a_failed_run_skips_its_dependants_only(tmp_path):
    g = _graph(tmp_path, jobs=2)
    bad = g.add("bad", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path)
    g.add("after_bad", _append(tmp_path, "x"), tmp_path, [bad])
    g.add("after_after", _append(tmp_path, "y"), tmp_path, ["after_bad"])
    g.add("other", _append(tmp_path, "z"), tmp_path)
    state = g.run()
    assert state == {"bad": "failed", "after_bad": "skipped", "after_after": "skipped", "other": "ok"}
    assert (tmp_path / "order.txt").read_text().split() == ["z"]


def test_nothing_starts_after_the_deadline(tmp_path):
    g = _graph(tmp_path, deadline=0)
    g.add("a", _append(tmp_path, "a"), tmp_path)
    assert g.run() == {"a": "not started"}
    assert not (tmp_path / "order.txt").exists()


def test_option_commands_reuse_the_shared_cnn_runs(tmp_path):
    g = _graph(tmp_path)
    for o in ("recipe_bce", "gru"):
        co.add_option(g, tmp_path, REPO / "configs" / "demo", o, 1, [], 0)
    cnn = [n for n in g.tasks if "/cnn_" in n]
    assert cnn == ["s1/cnn_bce_f0", "s1/cnn_bce_f1", "s1/cnn_bce_f2"]  # once for both options
    assert "seeds=[1042,1084,1126]" in g.tasks["s1/cnn_bce_f0"]["cmd"]
    assert g.tasks["s1/rnn_bce_gru_f2"]["deps"] == ["s1/dump_bce_f2"]
    inf = g.tasks["s1/inference_gru"]["cmd"]
    assert "models=[{cnn: rexnet200_bce, rnn: rexnet200_bce_gru}]" in inf
    for name, t in g.tasks.items():  # every config a command names exists
        assert all(not c.endswith(".yml") or (REPO / c).exists() for c in t["cmd"]), name
    co.add_option(g, tmp_path, REPO / "configs" / "demo", "recipe_bce", 0, [], 0)
    assert not any(c.startswith("seeds=") for c in g.tasks["s0/cnn_bce_f0"]["cmd"])  # the demo's


def test_table_gives_mean_and_spread_over_seeds():
    auc = {k: 0.8 for k in co.POSITIVE_LABELS}
    res = {"gru": {s: dict(test=t, test_prior=0.5, cv=c, cv_prior=0.4, auc_positive=auc,
                           seconds={"cnn_dump": 10.0, "head_inference": 4.0})
                   for s, (t, c) in enumerate([(0.3, 0.2), (0.4, 0.3)])}}
    row = co.table(res).splitlines()[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == ["gru", "2", "0.3500 ± 0.0500", "0.70 ± 0.10", "0.2500 ± 0.0500",
                         "0.62 ± 0.12"]
    assert cells[6:13] == ["0.80 ± 0.00"] * 7 and cells[13:] == ["10 ± 0", "4 ± 0"]


def test_every_option_has_its_configs_in_both_trees():
    for option, (cnns, pairs, _) in co.OPTIONS.items():
        for root in (REPO / "configs", REPO / "configs" / "demo"):
            for stage, names in (("train_cnn", cnns), ("dump_embeddings", cnns),
                                 ("train_rnn", [r for r, _ in pairs])):
                for name in names:
                    assert (root / stage / f"rexnet200_{name}.yml").is_file(), (option, root, stage, name)


def test_times_come_from_one_machine_only():
    auc = {k: 0.5 for k in co.POSITIVE_LABELS}
    res = {"gru": {s: dict(test=0.3, test_prior=0.5, cv=0.2, cv_prior=0.4, auc_positive=auc,
                           seconds={"cnn_dump": secs, "head_inference": secs}, machine=m)
                   for s, (secs, m) in enumerate([(10.0, "cpu"), (12.0, "cpu"), (500.0, "gpu")])}}
    cells = [c.strip() for c in co.table(res, "cpu").splitlines()[2].strip("|").split("|")]
    assert cells[1] == "3" and cells[13:] == ["11 ± 1", "11 ± 1"]
