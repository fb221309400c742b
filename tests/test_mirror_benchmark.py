"""benchmarks/mirror.py end to end in its --smoke mode (one real IXI validation pair, the default model)."""

from conftest import run_benchmark_smoke


def test_mirror_benchmark_scores_every_axis_and_says_how(tmp_path):
    stdout = run_benchmark_smoke("mirror.py", tmp_path, data=("ixi_t1_dlmuse/t1",))
    text = (tmp_path / "mirror.md").read_text()
    assert text.strip() == stdout.strip()  # it prints the table it writes
    for key in ("date:", "machine:", "git commit:", "command:", "--smoke", "pairs (1, fixed <- moving)"):
        assert key in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| packaged default")]
    assert [r[1] for r in rows] == [
        "one prediction",
        "mirrored left-right (default)",
        "mirrored front-back",
        "mirrored up-down",
    ]
    dice = [float(r[2]) for r in rows]
    assert all(0.45 < d < 0.75 for d in dice)  # the network alone on a real pair: well above chance
    assert len(set(dice)) == 4  # each mirroring changes the field
    for row in rows[1:]:
        assert abs(float(row[3]) - (float(row[2]) - dice[0])) < 2e-4  # the change column is the difference
