from tiny import WordTokenizer

from interpreter import measure

P = '<promise topic="t" tokens="{}"/>'


def test_spec_example_steps():
    text = (f"Try {P.format(3)}<async> x</async>{P.format(2)}<async> y z</async><sync/> End")
    costs = measure(text, WordTokenizer())
    # main: Try 1, pa 2, pb 3, sync 4, End 5 (drawn before the blocks end); A: x 3, </async> 4;
    # B: y 4, z 5, </async> 6  -> 6 steps for 5 plain tokens; 12 tokens decoded in all
    assert (costs.sequential_tokens, costs.parallel_steps, costs.total_tokens) == (5, 6, 12)
    assert costs.parallelism == 2.0


def test_main_waits_at_sync_for_the_longest_block():
    text = f"A {P.format(5)}<async> b c d e</async><sync/> F G"
    costs = measure(text, WordTokenizer())
    # main: A 1, promise 2, sync 3, F 4 (held), G waits for the block: </async> at 7, fed at 8 -> G at 8
    assert costs.parallel_steps == 8
    assert costs.sequential_tokens == 7


def test_plain_text_has_speedup_one_and_tags_cost_steps():
    tok = WordTokenizer()
    assert measure("a b c", tok).theoretical_speedup == 1.0
    two_blocks = f"{P.format(1)}<async> a b c d</async>{P.format(1)}<async> e f g h</async><sync/>"
    costs = measure(two_blocks, tok)
    # main: p1 1, p2 2, sync 3; block 1: a..</async> at 2..6; block 2 (forked a step later): 3..7
    assert costs.parallel_steps == 7 and costs.theoretical_speedup == 8 / 7
    assert measure("", tok).theoretical_speedup == 1.0
