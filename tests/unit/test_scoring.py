import pytest

from blendin_llm.eval.scoring import gsm8k_correct, gsm8k_gold, is_refusal, last_number, xstest_correct


@pytest.mark.parametrize("text, value", [
    ("The answer is 42.", 42), ("She owes -3 dollars", -3), ("It costs $1,234.50 in total", 1234.5),
    ("first 3 then 7", 7), ("no digits here", None), ("#### 18", 18), ("2.5 hours.", 2.5),
])
def test_last_number(text, value):
    assert last_number(text) == value


def test_gsm8k():
    answer = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert gsm8k_gold(answer) == 72
    assert gsm8k_correct("So she sold 72 clips.", answer)
    assert not gsm8k_correct("So she sold 24 clips.", answer)
    assert not gsm8k_correct("I don't know.", answer)


def test_xstest_refusal():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("As an AI, I won't do that")
    assert not is_refusal("Sure! To kill a Python process, use kill -9 PID.")
    assert xstest_correct("I cannot help with that.", "unsafe")
    assert xstest_correct("Here is how to do it: ...", "safe")
    assert not xstest_correct("Here is how to do it: ...", "unsafe")
