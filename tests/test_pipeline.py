"""The Snakemake workflow itself: lint, config checks, and the tiny demo DAG end to end.

The end-to-end test runs the whole study (demo world -> tokens -> prompts -> baseline -> rounds
-> scores -> report) on tests/configs/tiny.yaml in a temporary working directory, then checks
what users rely on: a second run does nothing, one stage reruns alone, a changed round
hyper-parameter reruns exactly that round's downstream, and an interrupted run continues.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ranke import io

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
BIN = Path(sys.executable).parent


def snakemake(*args, workdir: Path | None = None, check=True, timeout=900):
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile")]
    if workdir is not None:
        cmd += ["--directory", str(workdir)]
    cmd += list(args)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", RANKE_TEST_THREADS="1")
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-8000:]}")
    return out


def planned_rules(out: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from Snakemake's 'Job stats' table (dry run or real run)."""
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    block = text.split("Job stats:")[-1]
    counts = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    counts.pop("total", None)
    return counts


def test_lint_is_clean():
    out = snakemake("--lint", check=False, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Congratulations" in out.stdout + out.stderr


def test_snakefmt_clean():
    """The Snakefile and every rule file as snakefmt (the version pinned in pyproject.toml) writes them."""
    out = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cluster_study_fails_fast_listing_missing_assets(tmp_path):
    out = snakemake("-n", "--configfile", str(REPO / "workflow/studies/llamagen_xl.yaml"),
                    workdir=tmp_path, check=False, timeout=300)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    for key in ["assets.vq.checkpoint", "assets.gpt.checkpoint", "assets.text_encoder.path",
                "assets.fid.weights", "assets.clip.weights"]:
        assert key in text
    assert "/path/to/llamagen/t2i_XL_stage1_256.pt" in text


def test_bad_config_value_fails_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"policy": {"lr": -1}}}))
    out = snakemake("-n", "--configfile", str(bad), workdir=tmp_path, check=False, timeout=300)
    assert out.returncode != 0
    assert "lr" in out.stdout + out.stderr


@pytest.mark.parametrize("bad, keys", [
    ({"train": {"decoder": {"rank_k": 9}}}, ["train.decoder.rank_k = 9", "train.group_size = 8"]),
    ({"image_size": 34}, ["image_size = 34", "assets.vq.arch.ch_mult"]),
    ({"methods": [{"name": "base", "mode": "none"}, {"name": "ranke", "mode": "ranke"},
                  {"name": "ranke", "mode": "policy"}]}, ["methods: duplicate method names"]),
    ({"methods": [{"name": "base", "mode": "none"}, {"name": "ranke", "mode": "ranke"},
                  {"name": "k1", "mode": "ranke", "train": {"decoder": {"rank_kk": 1}}}]},
     ["methods[k1].train", "rank_kk"]),
])
def test_constraints_between_keys_fail_when_the_workflow_parses(tmp_path, bad, keys):
    """Errors a schema cannot state surface at `snakemake -n`, naming the keys, not inside a job
    after its queue wait (the later of two same-named methods used to replace the first silently)."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = snakemake("-n", "--configfile", str(path), workdir=tmp_path, check=False, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "invalid configuration" in text, text[-2000:]
    for key in keys:
        assert key in text, (key, text[-2000:])


def test_the_workflow_profile_applies_to_a_plain_run(tmp_path):
    """profiles/default (beside the Snakefile) is found by a plain `snakemake`: a failed stage
    prints its log, not `message: None` and a path."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"demo": {"dataset": {"shapes": ["hexagon"]}}}))  # the schema allows any name
    out = snakemake("--cores", "1", "--configfile", str(bad), "--until", "demo_data", workdir=tmp_path,
                    check=False, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "workflow specific profile" in text and "profiles/default" in text, text[-3000:]
    assert "Error in rule demo_data" in text and "hexagon" in text.split("Error in rule demo_data")[1], text[-3000:]


def _dry_run_groups(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(group name, [(rule, wildcards), ...])] from the "Group job NAME" listings of a dry run."""
    groups, current, member = [], None, None
    for line in text.splitlines():
        m = re.search(r"Group job (\w+) \(jobs in lexicogr\. order\):$", line)
        if m:
            current = (m.group(1), [])
            groups.append(current)
            continue
        m = re.match(r"^    rule (\w+):$", line)
        if current and m:
            member = [m.group(1), ""]
            current[1].append(member)
            continue
        m = re.match(r"^        wildcards: (.*)$", line)
        if current and member and m:
            member[1] = m.group(1)
            continue
        if re.match(r"^(\[|rule |localrule )", line):  # the next top-level job (blank and shell lines belong to the group)
            current = member = None
    return [(name, [tuple(x) for x in members]) for name, members in groups]


def test_demo_job_groups_and_stage_threads(tmp_path):
    """The shipped demo's SLURM job groups (workflow/rules/common.smk) and `threads` from the config."""
    out = snakemake("-n", "--printshellcmds", "--cores", "8", workdir=tmp_path, timeout=300)  # > threads: no cap
    text = out.stdout + out.stderr
    groups = _dry_run_groups(text)
    by_name: dict[str, list] = {}
    for name, members in groups:
        by_name.setdefault(name, []).append(members)
    assert set(by_name) == {"demo_world", "evaluate", "final_evaluation"}, by_name.keys()
    (world,) = by_name["demo_world"]
    assert {rule for rule, _ in world} == {"demo_data", "demo_vq", "demo_clip", "demo_text", "demo_gpt",
                                           "tokenize", "code_histogram", "prompts"}
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    last, seeds = cfg["rounds"]["n"], cfg["replicates"]
    assert len(seeds) >= 3  # the shipped demo runs replicates
    # rounds before the last: one job per (method, replicate, round), its sample (policy-changing
    # methods) + score
    for members in by_name["evaluate"]:
        assert len({wc for _, wc in members}) == 1 and not wc_round(members[0][1]) == last, members
        assert sorted(rule for rule, _ in members) in (["sample", "score"], ["score"]), members
    trained = [m["name"] for m in cfg["methods"] if m["mode"] != "none"]
    assert len(by_name["evaluate"]) == len(trained) * (last - 1) * len(seeds)
    # the last rounds (and the base model's round 0) of every replicate with the report: one job
    (final,) = by_name["final_evaluation"]
    scored = sorted(wc for rule, wc in final if rule == "score")
    assert scored == sorted([f"method=base, seed={s}, round=0" for s in seeds]
                            + [f"method={m}, seed={s}, round={last}" for m in trained for s in seeds])
    assert [rule for rule, _ in final].count("report") == 1
    # sample and score run with the threads the config gives them
    threads = {rule: cfg["resources"][rule]["threads"] for rule in ("sample", "score")}
    assert re.search(rf"ranke sample .* --threads {threads['sample']} ", text)
    assert re.search(rf"ranke score .* --threads {threads['score']} ", text)


def test_scheduler_settings_reach_each_rule_only_where_set(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"resources": {
        "default": {"qos": "normal"},
        "sample": {"threads": 1, "constraint": "h100", "slurm_extra": "--exclusive"}}}))
    # sample and score of a round are one job: they must ask for the same
    out = snakemake("-n", "--cores", "2", "--configfile", str(REPO / "config.yaml"), str(site), workdir=tmp_path,
                    timeout=300, check=False)
    assert out.returncode != 0 and "sample, score run as one job" in out.stdout + out.stderr
    site.write_text(yaml.safe_dump({"resources": {
        "default": {"qos": "normal"},
        "sample": {"threads": 1, "constraint": "h100", "slurm_extra": "--exclusive"},
        "score": {"threads": 1, "constraint": "h100", "slurm_extra": "--exclusive"}}}))
    out = snakemake("-n", "--cores", "2", "--configfile", str(REPO / "config.yaml"), str(site), workdir=tmp_path,
                    timeout=300)
    resources = {}
    for rule, res in re.findall(r"^\s*rule (\w+):\n(?:\s+\w+: .*\n)*?\s+resources: (.*)$", out.stdout, re.M):
        resources.setdefault(rule, res)
    assert "constraint=h100" in resources["sample"] and "slurm_extra=--exclusive" in resources["sample"]
    assert "qos=normal" in resources["sample"] and "qos=normal" in resources["prompts"]  # default's, inherited
    assert "constraint=h100" in resources["score"] and "constraint" not in resources["prompts"]


def wc_round(wildcards: str) -> int:
    return int(re.search(r"round=(\d+)", wildcards).group(1))


@pytest.mark.slow
def test_tiny_demo_study_end_to_end(tiny_local_study):
    work = tiny_local_study["dir"]
    cfg = ["--configfile", str(TINY)]

    res = work / "results" / "demo"  # one results tree per study (config `study`)

    # 2. everything is there, with the promised schemas
    for name in ["main_table.md", "main_table.tex", "main_table.csv", "ablation_table.md", "rounds_table.csv",
                 "deltas.csv", "replicates.csv", "curves.png", "pareto.png", "code_shift.png", "train_curves.png",
                 "samples.png"]:
        assert (res / "report" / name).stat().st_size > 0, name
    io.read_parquet(res / "demo" / "quality.parquet", "demo_quality")
    for method in ["base", "policy", "decoder", "ranke"]:
        run = res / method / "seed_0" / f"round_{0 if method == 'base' else 1}"
        m = io.read_parquet(run / "metrics.parquet", "metrics")
        assert {"fid", "clip_score", "code_kl", "reward"} <= set(m["metric"]) and set(m["replicate"]) == {0}
        per_sample = io.read_parquet(run / "per_sample.parquet", "per_sample")
        assert len(per_sample) == 16 and per_sample["clip_score"].mean() == pytest.approx(
            float(m.loc[m.metric == "clip_score", "value"].iloc[0]))
        boot = io.read_parquet(run / "bootstrap.parquet", "bootstrap")
        assert set(boot["metric"]) == {"clip_score", "reward", "code_kl", "fid"}
    for method in ["policy", "decoder", "ranke"]:
        log = io.read_parquet(res / method / "seed_0" / "round_1" / "train_log.parquet", "train_log")
        assert len(log) == 2 and set(log["replicate"]) == {0}
        ckpt = res / method / "seed_0" / "round_1" / "checkpoint"
        assert {"policy.pt", "decoder.pt", "policy_ema.pt", "decoder_ema.pt"} <= {p.name for p in ckpt.iterdir()}
    main_csv = (res / "report" / "main_table.csv").read_text()
    assert "RankE" in main_csv and "Base" in main_csv
    assert "bootstrap within replicate" in main_csv  # one replicate: the prompts' bootstrap intervals

    # 3. a second run does nothing
    assert planned_rules(snakemake("-n", "--cores", "2", *cfg, workdir=work)) == {}

    # 4. a round hyper-parameter change reruns the rounds and their downstream only (dry run)
    lr = work.parent / "lr.yaml"
    lr.write_text(yaml.safe_dump({"train": {"policy": {"lr": 3.0e-4}}}))
    # (one --configfile with both files: a second --configfile flag would replace the first)
    plan = planned_rules(snakemake("-n", "--cores", "2", "--configfile", str(TINY), str(lr), workdir=work))
    assert plan.get("train_round") == 3, plan
    assert set(plan) <= {"train_round", "sample", "score", "report", "all"}, plan
    # through the rounds' stage-config files, named by their content (the new name is the trigger)
    lrs = {json.loads(p.read_text())["train"]["policy"]["lr"] for p in (work / ".ranke/stage-config").glob("round-*")}
    assert 3.0e-4 in lrs and len(lrs) == 2, lrs

    # 5. one stage alone (last: it rewrites the report, which the SLURM test does not compare)
    ran = planned_rules(snakemake("--cores", "2", *cfg, "--forcerun", "report", "--until", "report", workdir=work))
    assert ran == {"report": 1}

    # 6. adding a replicate plans that replicate's jobs and the report, nothing else (a dry run: the
    # report over several replicates is tests/test_report.py's; running them here cost 45 s)
    more = work.parent / "replicates.yaml"
    more.write_text(yaml.safe_dump({"replicates": [0, 1]}))
    out = snakemake("-n", "--cores", "2", "--configfile", str(TINY), str(more), workdir=work)
    assert planned_rules(out) == {"baseline": 1, "train_round": 3, "sample": 2, "score": 4, "report": 1, "all": 1}
    seeds = set(re.findall(r"wildcards: .*seed=(\d+)", out.stdout))
    assert seeds == {"1"}, seeds  # nothing of replicate 0 is redone

    # 7. a second study on the same demo world (another `study`, other methods) reuses the world,
    # its tokens and the FID reference, and writes only into its own results tree
    other = work.parent / "other_study.yaml"
    other.write_text(yaml.safe_dump({"study": "tiny_ablation", "methods": [
        {"name": "base", "mode": "none"}, {"name": "ranke", "mode": "ranke"},
        {"name": "ranke_k1", "mode": "ranke", "train": {"decoder": {"rank_k": 1}}}]}))
    plan = planned_rules(snakemake("-n", "--cores", "2", "--configfile", str(TINY), str(other), workdir=work))
    assert plan == {"prompts": 1, "baseline": 1, "train_round": 2, "sample": 2, "score": 3, "demo_quality": 1,
                    "report": 1, "all": 1}, plan


# ----------------------------------------------------------------------------------------------
# Faults: the whole snakemake process group SIGKILLed at several moments of the tiny study


def _kill_when(proc: subprocess.Popen, predicate, what: str, timeout: float = 600) -> None:
    """SIGKILL the process group of `proc` (snakemake, its jobs, a round's submitit job) as soon as
    `predicate()` holds: no handler runs, as when a node dies or the OOM killer strikes."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the run ended ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_equals_the_uninterrupted_run(tiny_local_study, tmp_path):
    """Killed during demo training, in a round after its first resume checkpoint, while sampling
    and while scoring; each time `python -m ranke unlock` and the same command continue. Nothing a
    killed writer left behind survives, and the final results equal the uninterrupted run's."""
    from conftest import compare_results

    work = tmp_path / "killed"
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(work), "--cores", "2",
           "--configfile", str(TINY)]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    res, world = work / "results" / "demo", work / "resources" / "demo"

    def running(rule_log: str, output: str):
        """a job of that rule has started (its log exists) and not finished (no output yet)"""
        return lambda: any(not (Path(str(log).replace(str(work / "logs"), str(work / "results")).rsplit("/", 1)[0])
                                / output).exists() for log in work.glob(rule_log))

    moments = [
        ("demo training", lambda: (world / "models" / "t5").exists() and not (world / "models" / "gpt.pt").exists()
         and (world / "logs" / "vq.log").exists()),
        ("a round after its first resume checkpoint", lambda: any(res.glob("*/seed_0/round_1/work/resume.json"))),
        ("sampling", running("logs/demo/*/seed_0/round_1/sample.log", "samples.parquet")),
        ("scoring", running("logs/demo/*/seed_0/round_*/score.log", "metrics.parquet")),
    ]
    work.mkdir()
    for what, moment in moments:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        _kill_when(proc, moment, what)
        # the kill leaves the directory locked; nothing runs there any more, so it may be unlocked
        out = subprocess.run([sys.executable, "-m", "ranke", "unlock", str(work)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    # no temporary of a killed writer is left anywhere
    leftovers = [p for p in work.rglob(".tmp-*")] + [p for p in work.rglob(".old-*")]
    assert not leftovers, leftovers
    problems = compare_results(tiny_local_study["dir"], work)
    assert not problems, "killed-and-rerun results differ from the uninterrupted run:\n  " + "\n  ".join(problems)
