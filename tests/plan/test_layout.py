"""Layout rules are the trainer's own checks, so the planner rejects exactly what a launch would."""

from longvila.plan.layout import Layout, candidate_layouts, layout_problems


def test_longvila_traps_are_flagged():
    # Qwen2-7B: 28 q / 4 kv heads. SP 14 under pure Ulysses splits neither way for the kv heads.
    problems = layout_problems(Layout(224, 8, 14, 1), 28, 4, 100_000)
    assert len(problems) == 1 and "num kv heads 4 neither divides by nor divides the ulysses degree 14" in problems[0]
    # 256 GPUs cannot be cut into SP groups of 28.
    problems = layout_problems(Layout(256, 8, 28, 1), 28, 4, 100_000)
    assert problems == ["world size 256 is not divisible by --seq_parallel_size 28: 4 of 256 GPUs would have no SP "
                        "group"]
    assert layout_problems(Layout(224, 8, 28, 1), 28, 4, 100_000) == []  # 28 kv-replicated 7x is valid
    assert layout_problems(Layout(224, 8, 14, 7), 28, 4, 100_000) == []  # ring 7 leaves ulysses 2: 2 kv heads each
    assert "neither divides" in layout_problems(Layout(224, 8, 14, 2), 28, 4, 100_000)[0]  # ulysses 7


def test_bad_ring_and_too_short_sequences():
    assert "not divisible by --seq_parallel_ring_size 3" in layout_problems(Layout(8, 8, 8, 3), 32, 8, 4096)[0]
    assert layout_problems(Layout(8, 8, 8, 1), 32, 8, 15) == [
        "15 tokens cannot be split over SP 8 (needs at least 16)"]


def test_candidates_cover_every_split_and_keep_a_fixed_one():
    layouts = candidate_layouts(8, 8)
    assert {(l.sp, l.ring) for l in layouts} == {(1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (4, 4), (8, 1), (8, 2),
                                                  (8, 4), (8, 8)}
    assert [(l.sp, l.ring) for l in candidate_layouts(256, 8, sp=28, ring=1)] == [(28, 1)]
    assert Layout(16, 8, 4, 2).dp == 4 and Layout(16, 8, 4, 2).ulysses == 2 and Layout(20, 8).nodes == 3
