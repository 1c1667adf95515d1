import torch

from course_lib.exercises import Case, check_function, compare
from course_lib.exercises.lesson00 import check_to_model_range, reference_to_model_range


def stub(pixels):
    raise NotImplementedError


def test_untouched_stub_is_not_attempted(capsys):
    r = check_to_model_range(stub)
    assert not r and not r.attempted and "not attempted" in capsys.readouterr().out


def test_wrong_answer_reports_input_and_hint_not_solution(capsys):
    r = check_to_model_range(lambda p: p.float() / 255.0)          # the classic [0, 1] mistake
    out = capsys.readouterr().out
    assert not r and r.attempted
    assert "input:" in out and "max error" in out and "hint:" in out and "127.5" not in out


def test_wrong_shape_and_dtype_are_named(capsys):
    assert not check_to_model_range(lambda p: reference_to_model_range(p).flatten())
    assert "shape" in capsys.readouterr().out
    assert not check_to_model_range(lambda p: (p.long() - 128))
    assert "dtype" in capsys.readouterr().out


def test_crashing_answer_is_reported_not_raised(capsys):
    assert not check_to_model_range(lambda p: p.nonexistent())
    assert "AttributeError" in capsys.readouterr().out


def test_right_answer_passes(capsys):
    assert check_to_model_range(reference_to_model_range)
    assert "correct" in capsys.readouterr().out


def test_compare_handles_numbers_and_tuples():
    assert compare(1.0, 1.0 + 1e-9, 1e-6, 0) is None
    assert "value" in compare(1.0, 2.0, 1e-6, 0)
    assert compare((torch.ones(2), 3.0), (torch.ones(2), 3.0), 1e-6, 0) is None
    assert "item 1" in compare((torch.ones(2), 3.0), (torch.ones(2), 4.0), 1e-6, 0)
    assert "NaN" in compare(torch.ones(2), torch.tensor([1.0, float("nan")]), 1e-6, 0)
    r = check_function("f", lambda x: x, lambda x: x, [Case("x", (torch.ones(1),))], "h", quiet=True)
    assert r.passed


def test_lesson05_projected_update_check(capsys):
    from course_lib.diffusion.guidance import apg_update
    from course_lib.exercises.lesson05 import check_projected_update
    assert check_projected_update(lambda c, u, eta: apg_update(c, u, eta=eta)[0])

    def whole_batch(c, u, eta):                                        # projects over the batch, not per image
        delta = c - u
        par = (delta * c).sum() / (c * c).sum() * c
        return delta - par + eta * par
    r = check_projected_update(whole_batch)
    assert not r and r.attempted and "per image" in capsys.readouterr().out
    assert not check_projected_update(lambda c, u, eta: c - u)          # ignores eta: CFG's update
    assert not check_projected_update(lambda c, u, eta: stub(c)).attempted
