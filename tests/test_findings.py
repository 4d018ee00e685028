"""Findings: the per-direction statistic against a direct computation, planted counts, sentences, gaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fabricate import (
    A_MOVED,
    DELTA_TOP,
    DW_TOP,
    INTRUDERS,
    SEED_SHARED,
    grid_rows,
    phi_of,
    planted_bases,
)

from lora_analysis.derive import queries as Q
from lora_analysis.derive import stats as S
from lora_analysis.show import findings as F
from lora_analysis.show import run_findings as R
from lora_analysis.show import target_sets as T

IDS = dict(comparison="seed", run_a="a", run_b="b", r_a=16, r_b=16, seed_a=0, seed_b=1, targets="all", layer=0,
           module="q", subject="A_delta")


@pytest.fixture(scope="module")
def shared(tables):
    return S.shared_directions(tables.phi)


def test_direction_energy_matches_the_projection_of_each_direction():
    rng = np.random.default_rng(1)
    Va, Vb = planted_bases(96, 16, 16, [0.9, 0.6], rng)
    rows = grid_rows(phi_of(Va, Vb), 96, **IDS)
    energy = S.direction_energy(rows)
    direct = np.sum((Vb.T @ Va) ** 2, axis=0)  # ||Vb^T v_i||^2, the second algorithm
    np.testing.assert_allclose(energy["energy"], direct, atol=1e-12)
    np.testing.assert_allclose(energy["energy"].iloc[:2], [0.9, 0.6], atol=1e-12)
    assert list(energy["i"]) == list(range(1, 17))
    assert energy["baseline"].unique().tolist() == [16 / 96]


def test_a_direction_counts_as_shared_from_halfway_between_baseline_and_one():
    threshold = (1 + 16 / 96) / 2
    rng = np.random.default_rng(2)
    Va, Vb = planted_bases(96, 16, 16, [threshold + 0.01, threshold - 0.01, 0.99], rng)
    shared = S.shared_directions(grid_rows(phi_of(Va, Vb), 96, **IDS))
    assert len(shared) == 1
    assert shared["shared"].iloc[0] == 2  # the first and the third: every direction is tested
    assert shared["threshold"].iloc[0] == pytest.approx(threshold)


def test_direction_energy_wants_one_group():
    rng = np.random.default_rng(3)
    rows = pd.concat([grid_rows(phi_of(*planted_bases(32, 4, 4, [], rng)), 32, **dict(IDS, layer=layer))
                      for layer in (0, 1)])
    with pytest.raises(ValueError, match="one pair"):
        S.direction_energy(rows)


def test_shared_directions_recovers_the_planted_counts(shared):
    seed = shared[(shared["comparison"] == "seed") & (shared["r_a"] == 64)]
    for subject in ("A_delta", "dW"):
        for module, count in (("q", SEED_SHARED["q"]), ("v", SEED_SHARED["v"]), ("ffn_out", SEED_SHARED["ffn_out"])):
            got = seed[(seed["subject"] == subject) & (seed["module"] == module)]["shared"]
            assert len(got) == 2 and (got == count).all(), (subject, module, list(got))
    rank = shared[shared["comparison"] == "rank"]
    assert (rank[rank["subject"].isin(["A_delta", "dW"])]["shared"] == 1).all()
    assert (shared[shared["subject"].isin(["A", "A_init"])]["shared"] == 0).all()


def test_findings_state_the_planted_numbers(tables, shared, sweep):
    top = F.top_direction(tables.phi)
    assert top.values["A_delta"] == pytest.approx(DELTA_TOP) and top.values["dW"] == pytest.approx(DW_TOP)
    assert top.values["A"] < 0.4
    assert any("A − A_init: φ(1, 64) between r=8 and r=64 is 0.80" in s for s in top.sentences)

    q_v = F.q_vs_v(shared)
    assert q_v.values["A_delta.q"] == SEED_SHARED["q"] and q_v.values["A_delta.v"] == SEED_SHARED["v"]
    assert any("q shares 6.0 directions" in s and "q shows a higher intrinsic rank than v" in s
               for s in q_v.sentences)
    assert any(s.startswith("A at r=64") and "does not show" in s for s in q_v.sentences)

    control = F.init_control(tables.phi, shared)
    assert control.values["shared_max"] == 0 and "the inits are independent" in control.sentences[0]

    moved = F.a_moved(tables.modules)
    assert moved.values == pytest.approx({f"r{r}": v for r, v in A_MOVED.items()})
    assert "mostly its random init" in moved.sentences[0]

    amp = F.amplification(tables.dw_vs_w, layer=1)
    assert amp.values["r4"] == pytest.approx(20.0) and amp.values["r64"] == pytest.approx(2.0)
    assert "20.0 at r=4 against 2.0 at r=64" in amp.sentences[0]

    assert F.intruder_counts(tables.intruders).values == {f"r{r}": float(n) for r, n in INTRUDERS.items()}

    all_runs = pd.read_parquet(sweep / "runs.parquet")
    acc = R.accuracy(all_runs, S.accuracy_table(all_runs), S.validation_table(all_runs), S.full_reference(all_runs))
    assert acc.values == pytest.approx({"best": 0.778, "chosen_on_validation": 1.0, "full": 0.801})
    assert "full fine-tuning 0.801" in acc.sentences[-1] and "majority class 0.575" in acc.sentences[-1]


def test_missing_data_gives_a_sentence_not_an_error(tables):
    empty_phi, no_runs = tables.phi.iloc[0:0], pd.DataFrame({"run": []})
    for finding in (F.top_direction(empty_phi), F.q_vs_v(S.shared_directions(empty_phi)),
                    F.init_control(empty_phi, S.shared_directions(empty_phi)), F.a_moved(tables.modules.iloc[0:0]),
                    F.amplification(tables.dw_vs_w.iloc[0:0], layer=0), F.intruder_counts(tables.intruders.iloc[0:0]),
                    F.w_dw_overlap(tables.w_dw_phi.iloc[0:0], layer=0), R.accuracy(no_runs, S.accuracy_table(no_runs),
                                                                          S.validation_table(no_runs), None),
                    R.trained_enough(pd.DataFrame({"run": []}), {})):
        assert finding.table is None and len(finding.sentences) == 1 and finding.sentences[0]
    assert F.top_direction(tables.phi, r_small=4, r_large=64).values["A_delta"] == pytest.approx(DELTA_TOP)
    assert "No rank pair r=2" in F.top_direction(tables.phi, r_small=2).sentences[0]
    random_only = tables.phi[tables.phi["comparison"] == "random"]
    assert "No rank or seed pair" in F.init_control(random_only, S.shared_directions(random_only)).sentences[0]


def test_choosing_what_to_show(tables):
    assert Q.middle_layer(tables.modules) == 0  # layers 0, 1: (n - 1) // 2
    assert Q.shown_roles(tables.modules) == ["q", "v", "ffn_out"]
    assert Q.main_targets(tables.modules) == "all"
    rows = Q.pair_rows(tables.phi, "rank", subject="A", layer=1, module="v", r_a=8, r_b=64)
    assert set(rows["run_a"].astype(str)) == {"r8-seed0"} and Q.phi_matrix(rows).shape == (8, 64)


def budget_runs(scores: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for targets, values in scores.items():
        for seed, value in enumerate(values):
            rows.append({"run": f"{targets}-seed{seed}", "method": "lora", "lora.targets": targets, "lora.r": 4,
                         "seed": seed, "lora.budget": "r32@q", "test_accuracy": value, "lora_params": 1000,
                         "test_examples": 2000})
    return pd.DataFrame(rows)


def under_budget(runs: pd.DataFrame) -> F.Finding:
    return T.ffn_under_budget(runs, S.accuracy_table(runs))


def test_target_sets_under_budget_are_compared_with_welch_intervals_against_the_anchor():
    from scipy import stats as sp

    from lora_analysis.derive.tuned import difference_interval

    scores = {"q": [0.80, 0.81, 0.79], "attn": [0.80, 0.81, 0.82], "ffn": [0.84, 0.85, 0.87],
              "all": [0.85, 0.86, 0.84]}
    found = under_budget(budget_runs(scores))
    text = " ".join(found.sentences)
    expected = sp.ttest_ind(scores["ffn"], scores["attn"], equal_var=False).confidence_interval(0.95)
    diff = np.mean(scores["ffn"]) - np.mean(scores["attn"])
    assert found.values["ffn against attn (the two halves of a block)"] == pytest.approx(diff)
    assert (f"ffn against attn (the two halves of a block): 0.853 against 0.810, difference {diff:+.3f} "
            f"[{expected.low:+.3f}, {expected.high:+.3f}]: attention-only is below: the anchor is supported") in text
    all_ffn = next(s for s in found.sentences if s.startswith("all against ffn"))
    assert all_ffn.startswith("all against ffn: 0.850 against 0.853, difference -0.003 [")
    assert all_ffn.endswith("cannot tell (the interval holds 0).")
    pooled = next(s for s in found.sentences if s.startswith(T.FFN_ONLY))  # ffn against q and attn; all is neither
    low, high = difference_interval(*(S.accuracy_table(budget_runs({k: scores[k] for k in keys}))
                                      for keys in (["ffn"], ["q", "attn"])))[1:]
    assert pooled == (f"{T.FFN_ONLY}: 0.853 against 0.805, difference +0.048 [{low:+.3f}, {high:+.3f}]: "
                      "attention-only is below: the anchor is supported.")
    assert not any(s.startswith(T.FFN_ONLY) for s in under_budget(budget_runs(
        {k: scores[k] for k in ("attn", "ffn", "all")})).sentences)  # the ffn against attn pair again: not repeated
    reversed_ = under_budget(budget_runs({"attn": [0.86, 0.87, 0.88], "ffn": [0.80, 0.81, 0.80]}))
    assert "attention-only is above: the anchor is not supported" in reversed_.sentences[-1]
    single = under_budget(budget_runs({"attn": [0.80], "ffn": [0.81]}))
    assert "cannot tell (a set has one seed" in single.sentences[-1]
    roles = under_budget(budget_runs({"q": [0.70, 0.71, 0.72], "v": [0.80, 0.81, 0.80], "q+v": [0.71, 0.70, 0.72]}))
    v_q = next(s for s in roles.sentences if s.startswith("v against q (Hu et al. 2021, Table 5"))
    assert v_q.endswith("q alone is below: the anchor is supported.")
    qv_q = next(s for s in roles.sentences if s.startswith("q+v against q"))
    assert qv_q.endswith("cannot tell (the interval holds 0).")
    assert not any(s.startswith("ffn against attn") for s in roles.sentences)  # neither set was run
    flipped = under_budget(budget_runs({"q": [0.80, 0.81, 0.80], "v": [0.70, 0.71, 0.72]}))
    assert "q alone is above: the anchor is not supported" in " ".join(flipped.sentences)
    no_budget = budget_runs({"q": [0.8]}).drop(columns="lora.budget")
    assert T.ffn_under_budget(no_budget, S.accuracy_table(pd.DataFrame())).sentences[0].startswith("No")


def test_difference_interval_of_set_means_follows_welch_satterthwaite():
    from scipy import stats as sp

    from lora_analysis.derive.tuned import difference_interval

    a = pd.DataFrame({"mean": [0.8, 0.9], "std": [0.01, 0.03], "n": [3, 4]})
    b = pd.DataFrame({"mean": [0.7], "std": [0.02], "n": [5]})
    diff, low, high = difference_interval(a, b)
    parts = np.array([0.01**2 / 3 / 4, 0.03**2 / 4 / 4, 0.02**2 / 5])
    df = parts.sum() ** 2 / (parts**2 / np.array([2, 3, 4])).sum()
    half = sp.t.ppf(0.975, df) * np.sqrt(parts.sum())
    assert (diff, low, high) == pytest.approx((0.15, 0.15 - half, 0.15 + half))
    assert np.isnan(difference_interval(a.assign(n=[1, 4]), b)[1])


def test_a_moved_says_which_ranks_stay_near_their_init():
    sentence = F.a_moved(pd.DataFrame({"r": [8, 8, 64], "a_moved": [0.1, 0.15, 1.09]})).sentences[0]
    assert "12% at r=8" in sentence and "109% at r=64" in sentence
    assert "at r=8 A is still mostly its random init" in sentence and "at r=64 A moved by half" in sentence


def test_runs_stuck_at_the_majority_class_are_named():
    runs = pd.DataFrame({"run": ["r1-seed0", "r1-seed1", "r8-seed0", "full-seed0"], "method": ["lora"] * 3 + ["full"],
                         "lora.r": [1, 1, 8, None], "lora.alpha": [8.0, 8.0, 8.0, None],
                         "test_accuracy": [0.575, 0.70, 0.79, 0.575], "majority_accuracy": [0.575] * 4,
                         "final_train_loss": [0.69, 0.6, 0.4, 0.69]})
    (sentence,) = R.stuck_at_majority(runs)
    assert sentence.startswith("1 of 3 LoRA runs predict the majority class (r1-seed0): LoRA scale alpha/r 8 "
                               "(the largest in the sweep); final training loss 0.690")
    found = R.accuracy(runs, S.accuracy_table(runs), S.validation_table(runs), S.full_reference(runs))
    assert sentence in found.sentences
    assert R.stuck_at_majority(runs.assign(test_accuracy=0.7)) == []


def test_the_opening_lines_give_every_pair_of_target_sets_at_one_budget():
    from types import SimpleNamespace

    from lora_analysis.show.summary import in_short

    budget = under_budget(budget_runs({"q": [0.80, 0.81, 0.79], "attn": [0.80, 0.81, 0.82],
                                       "ffn": [0.84, 0.85, 0.87], "all": [0.85, 0.86, 0.84]}))
    nothing = F.Finding.missing("none", "none", "not measured")
    found = SimpleNamespace(accuracy=nothing, rates=nothing, sets=nothing, budget=budget, patterns=nothing,
                            controls=nothing,
                            loss=nothing)
    pairs = ["ffn against attn (the two halves of a block)", "all against attn", "all against ffn", T.FFN_ONLY]
    assert [line[:len(pair)] for line, pair in zip(in_short(found, None, None), pairs, strict=True)] == pairs
    roles = under_budget(budget_runs({"q": [0.70, 0.71, 0.72], "v": [0.80, 0.81, 0.80], "q+v": [0.71, 0.70, 0.72]}))
    lines = in_short(SimpleNamespace(**{**vars(found), "budget": roles}), None, None)
    assert [line.split(" (")[0] for line in lines] == ["v against q", "q+v against q"]  # labels with a colon


def test_target_sets_of_a_rank_ablation_are_compared_rank_by_rank_with_welch_intervals():
    """attn and ffn at r=1, 8, 64 (ffn holding 1.25x attn's parameters at each rank), each cell at its one rate;
    r=64 of attn collapsed (left out of the common ranks); q alone at r=8 only, v nowhere: no v pair."""
    from types import SimpleNamespace

    from scipy import stats as sp

    from lora_analysis.derive.tuned import difference_interval
    from lora_analysis.show.summary import in_short

    scores = {("attn", 1): [0.78, 0.79, 0.77], ("attn", 8): [0.80, 0.81, 0.80], ("attn", 64): [0.575] * 3,
              ("ffn", 1): [0.80, 0.81, 0.82], ("ffn", 8): [0.82, 0.83, 0.81], ("ffn", 64): [0.81, 0.80, 0.82],
              ("q", 8): [0.70, 0.72, 0.71]}
    rows = []
    for (targets, r), values in scores.items():
        for seed, value in enumerate(values):
            collapsed = value == 0.575
            rows.append({"run": f"{targets}-r{r}-s{seed}", "method": "lora", "lora.targets": targets, "lora.r": r,
                         "seed": seed, "optim.lr": 1e-3, "test_accuracy": value, "majority_accuracy": 0.575,
                         "val_accuracy": 0.571 if collapsed else value, "val_majority": 0.571,
                         "lora_params": (3840 if targets == "ffn" else 3072 if targets == "attn" else 768) * r})
    table = S.accuracy_table(pd.DataFrame(rows))
    found = T.by_rank(table, "test_accuracy")
    assert list(found.values) == ["ffn against attn (the two halves of a block)"]
    (sentence,) = found.sentences
    live = table[~table["collapsed"]]
    a, b = (live[(live["targets"] == t) & live["r"].isin([1, 8])] for t in ("ffn", "attn"))
    diff, low, high = difference_interval(a, b)
    assert found.values["ffn against attn (the two halves of a block)"] == pytest.approx(diff)
    assert sentence.startswith("ffn against attn (the two halves of a block): over r=1, 8 (each rank once; ffn holds "
                               "1.25x attn's LoRA parameters at each rank (not matched: the budget experiment "
                               f"matches them)), 0.815 against 0.792, difference {diff:+.3f} "
                               f"[{low:+.3f}, {high:+.3f}]: attention-only is below: the anchor is supported. By "
                               "rank: r=1 +0.030 [")
    one = sp.ttest_ind(scores[("ffn", 8)], scores[("attn", 8)], equal_var=False).confidence_interval(0.95)
    assert f"r=8 +0.017 [{one.low:+.3f}, {one.high:+.3f}]." in sentence and "r=64" not in sentence
    nothing = F.Finding.missing("none", "none", "not measured")
    found_all = SimpleNamespace(accuracy=nothing, rates=nothing, sets=found, budget=nothing, patterns=nothing,
                                controls=nothing, loss=nothing)
    (line,) = in_short(found_all, None, None)
    assert line == sentence.split(". By rank: ")[0] + "."  # the opening line: the verdict, not every rank
    assert not T.by_rank(table[table["targets"] == "q"], "test_accuracy").measured  # one set: nothing to compare
    # cells trained at one budget are the budget finding's: at their common rank they are not compared here
    budget = budget_runs({"q": [0.80, 0.81, 0.79], "v": [0.84, 0.85, 0.87]})
    assert not T.by_rank(S.accuracy_table(budget), "test_accuracy", S.accuracy_table(budget)).measured
    assert T.by_rank(S.accuracy_table(budget), "test_accuracy").measured  # without the runs, as any two sets


def test_the_best_cell_is_chosen_on_validation_and_reported_on_test():
    from test_tuned import sweep

    runs = sweep({("all", 8): {1e-3: ([0.82, 0.81, 0.83], [0.78, 0.79, 0.78])},
                  ("all", 64): {1e-3: ([0.80, 0.79, 0.80], [0.81, 0.82, 0.81])}})
    found = R.accuracy(runs, S.accuracy_table(runs), S.validation_table(runs), S.full_reference(runs))
    assert "Best LoRA cell (chosen on validation): targets all at r=8, 0.783" in found.sentences[-1]
    assert found.values["best"] == pytest.approx(0.7833, abs=1e-4) and found.values["chosen_on_validation"] == 1.0
    test_only = runs.drop(columns="val_accuracy")
    no_val = R.accuracy(test_only, S.accuracy_table(test_only), S.validation_table(test_only),
                        S.full_reference(test_only))
    assert "(the best on test: no validation metric to choose by): targets all at r=64" in no_val.sentences[-1]


def test_the_opening_subspace_lines_name_their_target_set_when_one_is_named():
    """A sweep of several target sets judges the subspaces of one (``report targets=``): its opening lines say
    which; without a name (a sweep of one set) they read as before."""
    from types import SimpleNamespace

    from lora_analysis.show.summary import in_short

    summary = pd.DataFrame([dict(comparison="rank", r_a=8, r_b=64, subject=subject, energy=0.83, control=0.81,
                                 control_name="geometry", excess_mean=0.02, excess_std=0.05, cases=12, task_cases=0)
                            for subject in ("A_delta", "dW")])
    nothing = F.Finding.missing("none", "none", "not measured")
    found = SimpleNamespace(accuracy=nothing, rates=nothing, sets=nothing, budget=nothing, patterns=nothing,
                            controls=SimpleNamespace(table=summary), loss=nothing)
    named = in_short(found, (8, 64), None, "ffn")
    assert [line.split(":")[0] for line in named] == ["A − A_init, r=8 vs r=64 (ffn)", "ΔW, r=8 vs r=64 (ffn)"]
    assert named[0].endswith("φ(1, r_b) 0.83 against the strongest control 0.81 (input-geometry baseline), excess "
                             "+0.02 ± 0.05 over 12 cases: not above the control (task-specific in 0).")
    assert [line.split(":")[0] for line in in_short(found, (8, 64), None)] == ["A − A_init, r=8 vs r=64",
                                                                              "ΔW, r=8 vs r=64"]
