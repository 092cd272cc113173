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


def test_graph_records_start_end_and_machine(tmp_path):
    g = co.Graph(1, float("inf"), tmp_path / "runs.jsonl", machine="GPU X")
    (tmp_path / "output").mkdir()
    g.add("a", _append(tmp_path, "a"), tmp_path)
    g.run()
    (line,) = co.read_runs(tmp_path / "runs.jsonl")
    assert line["machine"] == "GPU X" and line["start"] <= line["end"] and line["rc"] == 0


def test_wall_time_counts_overlapping_runs_once_and_skips_gaps(tmp_path):
    log = tmp_path / "runs.jsonl"
    for name, a, b in (("x", 0, 10), ("y", 5, 20), ("z", 100, 110), ("old", None, None)):
        line = {"task": name, "rc": 0, "seconds": 1.0}
        log.open("a").write(json.dumps(line if a is None else {**line, "start": a, "end": b}) + "\n")
    assert co.wall_seconds(log) == 30
    assert co.wall_seconds(tmp_path / "none.jsonl") == 0


def _dry_run(ws, capsys, *extra):
    assert co.main([str(ws), "--dry-run", *extra]) == 0
    return capsys.readouterr().out


def test_dry_run_prints_the_plan_and_makes_nothing(tmp_path, capsys):
    ws = tmp_path / "cmp"
    out = _dry_run(ws, capsys, "--profile", "bench_thin", "--options", "recipe_bce", "neighbours",
                   "--seeds", "0", "1")
    assert not ws.exists()
    assert "profile bench_thin: 480 train + 80 test studies, 16-24 thin slices 2 mm apart" in out
    assert f"make_synthetic_data.py {ws}/data --profile bench_thin\n" in out
    # Per seed and option: 3 CNNs, 3 dumps, 3 heads, inference, scores.
    assert "44 runs, 2 at a time" in out and "(0 done)" in out
    assert "[to run] s1/cnn_neighbours_f2: python src/train_rsna.py -c configs/demo/train_cnn/" \
           "rexnet200_neighbours.yml dataset.fold=2 seeds=[1042,1084,1126]" in out
    assert "s1/rnn_bce_f0 (after s1/dump_bce_f0)" in out
    # A rerun's plan marks what runs.jsonl says finished (its stage then skips the work).
    ws.mkdir()
    co.record_run(ws / "runs.jsonl", "s0/cnn_bce_f0", 0, 0.0, 5.0, "", "cpu")
    co.record_run(ws / "runs.jsonl", "s0/dump_bce_f0", 1, 5.0, 6.0, "", "cpu")
    co.record_run(ws / "runs.jsonl", "data/make_synthetic_data", 0, 0.0, 1.0, "", "cpu")
    out = _dry_run(ws, capsys, "--profile", "bench", "--options", "recipe_bce", "--seeds", "0",
                   "--n-train", "4", "--slices", "3", "5")
    assert "[done] s0/cnn_bce_f0:" in out and "[to run] s0/dump_bce_f0 " in out and "(1 done)" in out
    assert f"[done] data/make_synthetic_data: python src/make_synthetic_data.py {ws}/data " \
           "--profile bench --n-train 4 --slices 3 5\n" in out
    assert "profile bench, n_train 4, slices [3, 5]: 4 train + 80 test studies, 3-5 slices over" in out


def test_the_default_data_is_the_demos(tmp_path):
    args = co.parse_args([str(tmp_path)])
    (name, cmd), *rest = co.prep_commands(tmp_path, REPO / "configs" / "demo", args.options, args)
    assert args.profile == "demo" and cmd[2:] == [str(tmp_path / "data"), "--profile", "demo"]
    assert [n for n, _ in rest] == ["data/make_image", "data/make_image_lungcrop", "data/make_csv",
                                    "data/make_csv_lungcrop", "data/make_npz", "data/make_npz_lungcrop"]


def _scores(ws, option, seed, score):
    d = ws / f"seed_{seed}" / "output" / "scores" / option
    d.mkdir(parents=True)
    (d / "test.json").write_text(json.dumps({"files": [{"score": score, "prior_score": 0.5}]}))
    per = {k: {"auc_positive": 0.7} for k in co.POSITIVE_LABELS}
    (d / "cv.json").write_text(json.dumps({"cross_validation": {"score": score, "prior_score": 0.5,
                                                                "per_label": per}}))


def test_results_carry_profile_and_the_runs_machine_and_survive_a_smaller_rerun(tmp_path):
    log = tmp_path / "runs.jsonl"
    _scores(tmp_path, "gru", 0, 0.3)
    for task in ("s0/cnn_bce_f0", "s0/rnn_bce_gru_f0", "s0/inference_gru"):
        co.record_run(log, task, 0, 0.0, 10.0, "", "GPU X")
    co.record_run(log, "s0/cnn_bce_f0", 0, 20.0, 21.0, "", "CPU Y")  # a rerun that skipped it
    res = co.collect(tmp_path, ["gru", "metricloss"], [0, 1], log, "CPU Y", "bench")
    r = res["gru"][0]
    assert list(res) == ["gru"] and r["profile"] == "bench" and r["machine"] == "GPU X"
    assert r["seconds"] == {"cnn_dump": 10.0, "head_inference": 20.0}
    older = {"metricloss": {"1": {**r, "test": 0.9}}, "gru": {"0": {**r, "test": 0.1}}, "nope": {},
             "recipe_bce": {"2": r}}
    merged = co.merged_results(res, json.loads(json.dumps(older)))
    assert merged["gru"][0]["test"] == 0.3 and merged["metricloss"][1]["test"] == 0.9
    assert list(merged) == ["recipe_bce", "gru", "metricloss"]  # OPTIONS' order
    head = co.table_header("bench", co.with_overrides("bench", {})[1], "GPU X", 3600.0, merged)
    assert "profile `bench` (480 train + 80 test studies" in head and "Machine: GPU X" in head
    assert "3600 s (1.0 h)" in head and "other data" not in head
    merged["gru"][0]["profile"] = "demo"
    assert "other data: demo" in co.table_header("bench", co.with_overrides("bench", {})[1], "GPU X",
                                                 0.0, merged)
