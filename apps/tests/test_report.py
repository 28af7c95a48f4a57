"""Tests for apps/make_report.py and apps/report/ (pytest, /usr/bin/python3 -m pytest apps/tests/test_report.py)."""
import csv
import math
import pathlib
import sys

import pytest

APPS = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(APPS))

import make_report  # noqa: E402
from report import common, moe_expert, prune_mlp, prune_mlp_global, vit, vit_global, vit_topk  # noqa: E402

REPO = APPS.parent


def write_prune_csv(path, records):
    """records: (variant, sparsity, seed, test_acc_hard[, test_acc_as_trained]); other columns filled in."""
    total = 266200
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(prune_mlp.COLUMNS)
        for variant, sparsity, seed, acc, *rest in records:
            as_trained = rest[0] if rest else acc
            nnz = round((1 - sparsity / 100) * total)
            writer.writerow([variant, sparsity, seed, 470, 2, 256, 0.001, 1, 0, 0, 0, 0.5, 0.8, acc,
                             as_trained, nnz, total, 0, 30.5, 1])


def three_seed_records():
    return [
        # hard: 90% -> 0.80, 0.82, 0.84 (mean 0.82, std 0.02); 98% -> 0.30, 0.40, 0.50 (0.40, 0.10)
        ("hard", 90, 1, 0.80), ("hard", 90, 2, 0.82), ("hard", 90, 3, 0.84),
        ("hard", 98, 1, 0.30), ("hard", 98, 2, 0.40), ("hard", 98, 3, 0.50),
        # soft43: 90% -> 0.81 x3 (0.81, 0); 98% -> 0.70, 0.74, 0.72 (0.72, 0.02)
        ("soft43", 90, 1, 0.81), ("soft43", 90, 2, 0.81), ("soft43", 90, 3, 0.81),
        ("soft43", 98, 1, 0.70), ("soft43", 98, 2, 0.74), ("soft43", 98, 3, 0.72),
        # dense: pruned accuracies, unpruned 0.85, 0.86, 0.87 (repeated per sparsity)
        ("dense", 90, 1, 0.20, 0.85), ("dense", 98, 1, 0.10, 0.85),
        ("dense", 90, 2, 0.22, 0.86), ("dense", 98, 2, 0.12, 0.86),
        ("dense", 90, 3, 0.24, 0.87), ("dense", 98, 3, 0.14, 0.87),
    ]


def table_rows(markdown):
    """{first cell: [other cells]} of the Markdown table in markdown."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


# --- common -------------------------------------------------------------------------------------

def test_mean_std_is_the_sample_std():
    mean, std, n = common.mean_std([0.80, 0.82, 0.84])
    assert n == 3 and mean == pytest.approx(0.82) and std == pytest.approx(0.02)
    mean, std, n = common.mean_std([1.0])
    assert (mean, n) == (1.0, 1) and math.isnan(std)


def test_fmt_mean_std():
    assert common.fmt_mean_std(0.82, 0.02, 3) == "0.8200 ± 0.0200"
    assert common.fmt_mean_std(0.82, math.nan, 1) == "0.8200"
    assert common.fmt_mean_std(0.82, 0.02, 2, show_n=True) == "0.8200 ± 0.0200 (n = 2)"
    assert common.fmt_mean_std(math.nan, math.nan, 0) == "—"


def test_markdown_table_shape():
    text = common.markdown_table(["a", "b"], [["1", "x|y"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]
    with pytest.raises(ValueError):
        common.markdown_table(["a", "b"], [["1"]])


def test_read_csv_absent_and_numbers(tmp_path):
    assert common.read_csv(tmp_path / "nope.csv") is None
    (tmp_path / "a.csv").write_text("name,count,ratio\nx,3,0.5\n")
    assert common.read_csv(tmp_path / "a.csv") == [{"name": "x", "count": 3, "ratio": 0.5}]


# --- prune_mlp ----------------------------------------------------------------------------------

def test_prune_mlp_table_means_stds_and_bold(tmp_path):
    write_prune_csv(tmp_path / "prune_mlp.csv", three_seed_records())
    body = prune_mlp.render(tmp_path, tmp_path / "figures")
    rows = table_rows(body)
    assert rows["variant"] == ["90% sparse", "98% sparse"]
    assert list(rows)[1:] == [prune_mlp.LABELS[v] for v in ("dense", "hard", "soft43")]
    assert rows[prune_mlp.LABELS["hard"]] == ["**0.8200 ± 0.0200**", "0.4000 ± 0.1000"]
    assert rows[prune_mlp.LABELS["soft43"]] == ["0.8100 ± 0.0000", "**0.7200 ± 0.0200**"]
    assert rows[prune_mlp.LABELS["dense"]] == ["0.2200 ± 0.0200", "0.1200 ± 0.0200"]
    assert "over 3 seeds" in body
    assert "90%: 26,620; 98%: 5,324" in body
    assert "out of 266,200" in body
    assert "before pruning scores 0.8600 ± 0.0100 (3 seeds)" in body
    assert "seeds 1, 2, 3" in body
    assert "![Test accuracy against sparsity, per variant](figures/prune_mlp_accuracy.png)" in body
    png = tmp_path / "figures" / "prune_mlp_accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prune_mlp_uneven_seeds_show_n_and_ties_are_all_bold(tmp_path):
    write_prune_csv(tmp_path / "prune_mlp.csv", [
        ("hard", 90, 1, 0.80), ("hard", 90, 2, 0.90),   # mean 0.85, std 0.0707
        ("ste", 90, 1, 0.85),                           # mean 0.85, n = 1
    ])
    rows = table_rows(prune_mlp.render(tmp_path, tmp_path))
    assert rows[prune_mlp.LABELS["hard"]] == ["**0.8500 ± 0.0707 (n = 2)**"]
    assert rows[prune_mlp.LABELS["ste"]] == ["**0.8500 (n = 1)**"]


def test_prune_mlp_absent_csv_gives_none(tmp_path):
    assert prune_mlp.render(tmp_path, tmp_path / "figures") is None
    assert not (tmp_path / "figures").exists()


def test_prune_mlp_missing_column_is_an_error(tmp_path):
    (tmp_path / "prune_mlp.csv").write_text("variant,sparsity,seed\nhard,90,1\n")
    with pytest.raises(ValueError, match="test_acc_hard"):
        prune_mlp.render(tmp_path, tmp_path)


def test_prune_mlp_global_reads_its_own_csv_and_labels_the_global_variants(tmp_path):
    write_prune_csv(tmp_path / "prune_mlp_global.csv", [
        ("soft43", 90, 1, 0.80), ("global43", 90, 1, 0.83), ("hard_global", 90, 1, 0.78),
        ("dense_global", 90, 1, 0.30, 0.86), ("dense", 90, 1, 0.20, 0.86)])
    assert prune_mlp_global.render(tmp_path / "nothing", tmp_path) is None
    body = prune_mlp_global.render(tmp_path, tmp_path / "figures")
    rows = table_rows(body)
    assert rows[prune_mlp.LABELS["global43"]] == ["**0.8300**"]
    assert rows[prune_mlp.LABELS["dense_global"]] == ["0.3000"]
    assert list(rows)[1:] == [prune_mlp.LABELS[v] for v in ("dense", "soft43", "dense_global", "hard_global",
                                                            "global43")]
    assert "0.8600" in body  # the dense network before pruning
    assert (tmp_path / "figures" / prune_mlp_global.FIGURE).is_file()


def test_moe_expert_table_load_and_zero_expert_tokens(tmp_path):
    header = moe_expert.COLUMNS
    def row(router, seed, acc, load_max, cv, zero):
        values = {c: 0 for c in header}
        values.update(router=router, p=1.3333, l_rel=0.5, seed=seed, steps=100, epochs=1, batch_size=128,
                      lr=0.001, aux_loss=0.01, k=2, experts=8, train_examples=60000, eval_set="test",
                      eval_examples=10000, eval_acc=acc, experts_per_token_mean=2.0, experts_per_token_max=4,
                      load_max=load_max, load_cv=cv, load="0.125;0.125", eval_batch=1000, threads=1,
                      zero_expert_fraction=zero)
        return [values[c] for c in header]
    with open(tmp_path / "moe_router_expert.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerow(row("topk", 1, 0.80, 0.25, 0.5, 0.0))
        writer.writerow(row("topk", 2, 0.82, 0.25, 0.5, 0.0))
        writer.writerow(row("expert", 1, 0.84, 0.125, 0.0, 0.1))
        writer.writerow(row("expert", 2, 0.84, 0.125, 0.0, 0.3))
    rows = table_rows(moe_expert.render(tmp_path, tmp_path))
    topk = rows["softmax + hard top-2, renormalized"]
    expert = rows["expert choice: soft top-k of the tokens per expert, p = 4/3"]
    assert topk[0] == "—" and topk[1] == "0.8100 ± 0.0141" and topk[4] == "2.000 ± 0.000"
    assert expert[0] == "0.5·s" and expert[1] == "**0.8400 ± 0.0000**"
    assert expert[3] == "0.2000 ± 0.1414" and expert[4] == "1.000 ± 0.000"


# --- make_report: markers -----------------------------------------------------------------------

DOC = """# Title

Intro text.

<!-- report:prune_mlp -->
old prune table
<!-- /report:prune_mlp -->

Middle text.

<!-- report:moe -->
old moe text
<!-- /report:moe -->

End text.
"""


def test_replace_region_keeps_everything_else():
    new = make_report.replace_region(DOC, "prune_mlp", "NEW\nBODY\n")
    assert new == DOC.replace("old prune table\n", "\nNEW\nBODY\n\n")
    assert make_report.replace_region(new, "prune_mlp", "NEW\nBODY") == new   # idempotent
    assert make_report.replace_region(DOC, "prune_mlp", "") == DOC.replace("old prune table\n", "\n")


@pytest.mark.parametrize("broken, message", [
    (DOC.replace("<!-- report:prune_mlp -->\n", ""), "<!-- report:prune_mlp -->' not found"),
    (DOC.replace("<!-- /report:prune_mlp -->\n", ""), "<!-- /report:prune_mlp -->' not found"),
    (DOC + "<!-- report:prune_mlp -->\n", "more than once"),
    (DOC.replace("<!-- report:prune_mlp -->\nold prune table\n<!-- /report:prune_mlp -->",
                 "<!-- /report:prune_mlp -->\nold prune table\n<!-- report:prune_mlp -->"), "comes before"),
])
def test_replace_region_marker_errors(broken, message):
    with pytest.raises(make_report.ReportError, match=message):
        make_report.replace_region(broken, "prune_mlp", "x")


def test_main_updates_only_the_regions_with_results(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    write_prune_csv(results / "prune_mlp.csv", three_seed_records())
    docs = tmp_path / "applications.md"
    docs.write_text(DOC)
    assert make_report.main(["--results", str(results), "--docs", str(docs),
                             "--figures", str(tmp_path / "figures")]) == 0
    text = docs.read_text()
    before, rest = text.split("<!-- report:prune_mlp -->\n")
    region, after = rest.split("<!-- /report:prune_mlp -->\n")
    assert before == DOC.split("<!-- report:prune_mlp -->\n")[0]
    assert after == DOC.split("<!-- /report:prune_mlp -->\n")[1]      # moe region untouched (no CSV)
    assert "**0.8200 ± 0.0200**" in region and "old prune table" not in region
    assert (tmp_path / "figures" / "prune_mlp_accuracy.png").is_file()
    err = capsys.readouterr().err
    assert "skipping moe" in err and "skipping vit" in err


def test_main_missing_marker_is_an_error_and_writes_nothing(tmp_path, capsys):
    write_prune_csv(tmp_path / "prune_mlp.csv", three_seed_records())
    docs = tmp_path / "applications.md"
    broken = DOC.replace("<!-- /report:prune_mlp -->\n", "")
    docs.write_text(broken)
    assert make_report.main(["--results", str(tmp_path), "--docs", str(docs),
                             "--figures", str(tmp_path / "figures")]) == 2
    assert docs.read_text() == broken
    assert "<!-- /report:prune_mlp -->' not found" in capsys.readouterr().err


def test_main_absent_csv_skips_and_leaves_docs_alone(tmp_path, capsys):
    docs = tmp_path / "applications.md"
    docs.write_text(DOC)
    assert make_report.main(["--results", str(tmp_path), "--docs", str(docs)]) == 0
    assert docs.read_text() == DOC
    err = capsys.readouterr().err
    assert f"skipping prune_mlp: {tmp_path / 'prune_mlp.csv'} not found" in err


def test_main_print_only_prints_and_does_not_edit(tmp_path, capsys):
    write_prune_csv(tmp_path / "prune_mlp.csv", three_seed_records())
    docs = tmp_path / "applications.md"
    docs.write_text(DOC)
    assert make_report.main(["--results", str(tmp_path), "--docs", str(docs), "--print"]) == 0
    assert docs.read_text() == DOC
    assert not (tmp_path / "figures").exists()
    out = capsys.readouterr().out
    assert "| hard top-k | **0.8200 ± 0.0200** | 0.4000 ± 0.1000 |" in out


def test_main_missing_results_dir(tmp_path, capsys):
    assert make_report.main(["--results", str(tmp_path / "nope"), "--print"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_vit_topk_tables_per_noise_level_and_the_plot(tmp_path):
    base = {c: 0 for c in vit_topk.COLUMNS}
    records = []
    for noise, (ce, topk) in ((0, ((0.5, 0.9), (0.6, 0.8))), (20, ((0.4, 0.7), (0.3, 0.9)))):
        for seed, shift in ((1, 0.01), (2, -0.01)):
            for method, (top1, top5) in (("ce", ce), ("topk1_p43", topk)):
                records.append({**base, "method": method, "noise": noise, "seed": seed, "eval_split": "test",
                                "top1": top1 + shift, "top3": (top1 + top5) / 2, "top5": top5 + shift,
                                "steps": 300, "batch_size": 128, "lr": 0.01})
    with open(tmp_path / "vit_topk.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=vit_topk.COLUMNS)
        writer.writeheader()
        writer.writerows(records)
    body = vit_topk.render(tmp_path, tmp_path / "figures")
    clean, noisy = body.split("**20% of the training labels replaced at random**")
    assert "| `topk1_p43` | 2 | **0.600 ± 0.014** | **0.700 ± 0.000** | 0.800 ± 0.014 |" in clean
    assert "| `ce` | 2 | 0.500 ± 0.014 | **0.700 ± 0.000** | **0.900 ± 0.014** |" in clean  # a tie: both bold
    assert "| `ce` | 2 | **0.400 ± 0.014** | 0.550 ± 0.000 | 0.700 ± 0.014 |" in noisy
    assert (tmp_path / "figures" / "vit_topk_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert vit_topk.render(tmp_path / "absent", tmp_path / "figures") is None


def write_vit_csv(path, columns, records, dense=0.87):
    """records: (method, sparsity, seed, finetuned_acc[, nnz_per_layer]); other columns filled in."""
    base = {c: 0 for c in columns}
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for method, sparsity, seed, acc, *rest in records:
            writer.writerow({**base, "method": method, "sparsity": sparsity, "seed": seed, "eval_split": "test",
                             "dense_acc": dense, "oneshot_acc": 0.12 if sparsity == 90 else 0.13,
                             "finetuned_acc": acc, "as_trained_acc": acc, "nnz": 6 if sparsity == 90 else 3,
                             "prunable": 60, "steps": 150, "epochs": 0.35, "batch_size": 128, "lr": 0.003,
                             "band": 1, "anneal": 1, "pretrain_steps": 2150, "checkpoint_loaded": 1,
                             **({"oneshot_global_acc": 0.30 if sparsity == 90 else 0.20, "layers": "a;b",
                                 "prunable_per_layer": "40;20", "nnz_per_layer": rest[0] if rest else "4;2"}
                                if "layers" in columns else {})})


def test_vit_global_joins_the_per_layer_rows_of_the_same_checkpoint(tmp_path):
    write_vit_csv(tmp_path / "vit_finetune_global.csv", vit_global.COLUMNS, [
        ("global43", 90, 1, 0.84, "4;2"), ("global43", 90, 2, 0.82, "2;4"),
        ("oneshot_global", 90, 1, 0.79), ("oneshot_global", 90, 2, 0.81)])
    write_vit_csv(tmp_path / "vit_finetune.csv", vit.COLUMNS, [("soft43", 90, 1, 0.825), ("soft43", 90, 2, 0.825)])
    body = vit_global.render(tmp_path, tmp_path / "figures")
    rows = table_rows(body)
    assert rows[vit_global.LABELS["global43"]] == ["**0.8300 ± 0.0141**"]
    assert rows[vit_global.LABELS["soft43"]] == ["0.8250 ± 0.0000"]
    assert rows[vit_global.LABELS["oneshot_global"]] == ["0.8000 ± 0.0141"]
    assert rows["one-shot global magnitude pruning, no fine-tuning"] == ["0.3000"]
    assert rows["one-shot magnitude pruning per layer, no fine-tuning"] == ["0.1200"]
    assert rows["dense checkpoint, before pruning"] == ["0.8700"]
    # The split of the budget: layer a keeps (4/40 + 2/40) / 2, layer b (2/20 + 4/20) / 2.
    assert rows["global soft p = 4/3"] == ["90%", "7.5%", "15.0%"]
    assert "the same dense and one-shot accuracies" in body
    assert (tmp_path / "figures" / vit_global.FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert vit_global.render(tmp_path / "absent", tmp_path / "figures") is None


def test_vit_global_leaves_out_per_layer_rows_of_another_checkpoint(tmp_path):
    write_vit_csv(tmp_path / "vit_finetune_global.csv", vit_global.COLUMNS, [("global43", 90, 1, 0.84)])
    write_vit_csv(tmp_path / "vit_finetune.csv", vit.COLUMNS, [("soft43", 90, 1, 0.825)], dense=0.86)
    body = vit_global.render(tmp_path, tmp_path / "figures")
    assert vit_global.LABELS["soft43"] not in table_rows(body)
    assert "another dense checkpoint" in body
