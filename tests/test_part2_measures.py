"""The small measures Part 2's lessons added (issue 35): the encoder-only probe and its prompts (lesson 09), and
the KL-weight study of the scaling factor (lesson 11)."""
import pytest
import torch

from course_lib.text import vocabulary
from course_lib.training.text2image import digit_free_prompts, nearest_caption_probe, probe_queries


def test_digit_free_prompts_never_name_the_digit_they_ask_for():
    prompts, asked, named = digit_free_prompts()
    assert len(prompts) == 18 and sorted(set(asked)) == list(range(10))
    for p, a, n in zip(prompts, asked, named):
        assert vocabulary.parse_prompt(p)[0] == n != a          # the only digit the words name is another one
        assert abs(a - n) == 1


def test_probe_queries_use_held_out_synonyms_with_their_training_word():
    prompts, digits, attrs = probe_queries()
    assert len(prompts) == len(digits) == len(attrs) == 80
    assert prompts[digits.index(7)] == "a slim seven" and attrs[digits.index(7)] == {"thickness": "thin"}
    from course_lib.training.text2image import HELD_OUT_WORDS
    for p in prompts:                                         # each uses a word no training caption contains
        assert set(vocabulary.normalize_prompt(p)) & set(HELD_OUT_WORDS), p


def _bag_of_words(texts):
    """A toy encoder: one dimension per known word (synonyms map to their training word)."""
    vocab = sorted(vocabulary.VOCABULARY)
    syn = {"slim": "thin", "fat": "thick", "slender": "thin", "heavy": "thick"}
    out = torch.zeros(len(texts), len(vocab))
    for i, t in enumerate(texts):
        for w in vocabulary.normalize_prompt(t):
            w = syn.get(w, w)
            if w in vocab:
                out[i, vocab.index(w)] += 1
    return out + 1e-3


def test_nearest_caption_probe_scores_digit_and_attribute():
    bank = ["a thin seven", "a thick seven", "a seven", "a thick two", "a seven leaning left"]
    queries = ["a slim seven", "a fat seven", "a fat two", "a seven tilted to the left"]
    r = nearest_caption_probe(_bag_of_words, queries, [7, 7, 2, 7],
                              [{"thickness": "thin"}, {"thickness": "thick"}, {"thickness": "thick"},
                               {"slant": "left"}], bank)
    assert r["nearest"][:3] == ["a thin seven", "a thick seven", "a thick two"]
    assert r["digit"] == 1.0 and r["digit_and_attribute"] == 1.0
    wrong = nearest_caption_probe(_bag_of_words, ["a fat seven"], [2], [{"thickness": "thin"}], bank)
    assert wrong["digit"] == 0.0 and wrong["digit_and_attribute"] == 0.0


def test_nearest_caption_probe_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="as many digits"):
        nearest_caption_probe(_bag_of_words, ["a seven"], [7, 2], [{}], ["a seven"])


def test_scaling_factor_by_kl_weight_runs_and_refuses_bad_input():
    from course_lib.config import get_profile
    from course_lib.training.latent import scaling_factor_by_kl_weight
    profile = get_profile("test")
    r = scaling_factor_by_kl_weight(profile, (1e-2, 0.0), steps=2, n_images=64)
    assert set(r) == {1e-2, 0.0} and all(v["scaling_factor"] > 0 for v in r.values())
    with pytest.raises(ValueError, match="steps"):
        scaling_factor_by_kl_weight(profile, (1e-4,), steps=0)


# ------------------------------------------------------------------ lesson 12: the time density, the marginal field
def test_logit_normal_density_integrates_to_one_and_matches_the_sampler():
    from course_lib.diffusion import flow
    t = torch.linspace(1e-4, 1 - 1e-4, 20_001, dtype=torch.float64)
    p = flow.logit_normal_density(t)
    assert abs(torch.trapezoid(p, t).item() - 1) < 1e-3
    draws = flow.sample_time(200_000, "logit-normal", torch.Generator().manual_seed(0))
    hist = torch.histc(draws, bins=10, min=0, max=1) / len(draws) / 0.1               # empirical density
    mids = torch.arange(10, dtype=torch.float64) / 10 + 0.05
    assert torch.allclose(hist.double(), flow.logit_normal_density(mids), atol=0.05)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        flow.logit_normal_density(torch.tensor([0.0, 0.5]))


def test_marginal_velocity_closed_form():
    from course_lib.diffusion import flow
    g = torch.Generator().manual_seed(0)
    one = torch.randn(1, 1, 4, 4, generator=g)
    x = torch.randn(3, 1, 4, 4, generator=g)
    # one data point: every path is the straight line into it, v = (x_t - x0) / t
    assert torch.allclose(flow.marginal_velocity(x, 0.3, one), (x - one) / 0.3, atol=1e-5)
    # at t = 1, x_1 - mean(data), whatever the data
    data = torch.randn(5, 1, 4, 4, generator=g)
    assert torch.allclose(flow.marginal_velocity(x, 1.0, data), x - data.mean(0), atol=1e-5)
    # near t = 0, a point on the line of one data point follows that point's conditional velocity
    two = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    eps = torch.tensor([[0.3, -0.2]])
    x_t = flow.flow_path(two[1:], eps, torch.tensor([0.05]))
    assert torch.allclose(flow.marginal_velocity(x_t, 0.05, two), eps - two[1:], atol=1e-4)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        flow.marginal_velocity(x, 0.0, one)
    with pytest.raises(ValueError, match="data must be"):
        flow.marginal_velocity(x, 0.5, torch.randn(2, 3))


def test_conditional_and_marginal_losses_differ_by_a_constant():
    """Lipman et al. 2023, Thm. 2: L_CFM(v) - L_FM(v) does not depend on v; the marginal field minimises both."""
    from course_lib.diffusion import flow
    g = torch.Generator().manual_seed(0)
    data = torch.tensor([[-1.0, 0.0], [1.0, 0.5]])
    n = 200_000
    x0 = data[torch.randint(0, 2, (n,), generator=g)]
    eps = torch.randn(n, 2, generator=g)
    x_t = flow.flow_path(x0, eps, 0.5)
    target = flow.velocity_target(x0, eps)
    u = flow.marginal_velocity(x_t, 0.5, data)
    gaps, cfm = [], []
    for v in (torch.zeros_like(u), u, u + 0.3, 2 * u):
        cfm.append((v - target).pow(2).sum(1).mean().item())
        gaps.append(cfm[-1] - (v - u).pow(2).sum(1).mean().item())
    assert max(gaps) - min(gaps) < 0.02 * max(gaps)
    assert min(cfm) == cfm[1]


# ------------------------------------------------------------------ lesson 10: slerp, text diffs, spread
def test_slerp_and_text_diff():
    from course_lib.pipelines.unclip import slerp, text_diff
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    path = slerp(a, b, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(path[0], a, atol=1e-6) and torch.allclose(path[2], b, atol=1e-6)
    assert torch.allclose(path[1], torch.tensor([0.5 ** 0.5, 0.5 ** 0.5, 0.0]), atol=1e-6)
    assert torch.allclose(path.norm(dim=-1), torch.ones(3))
    z = text_diff(a, torch.tensor([0.0, 0.6, 0.8]), torch.tensor([0.0, 0.8, 0.6]), [0.0, 0.25, 0.5])
    assert z.shape == (3, 3) and torch.allclose(z[0], a, atol=1e-6)
    assert (z[1:, 1] > 0).all() and (z[1:, 2] < 0).all()           # towards to - from = (0, +, -)
    with pytest.raises(ValueError, match="z_image must be one"):
        text_diff(a[None], a, b, [0.1])
    with pytest.raises(ValueError, match="thetas"):
        text_diff(a, a, b, [1.5])


def test_spread_per_group():
    from course_lib.measures.comparisons import mean_pairwise_distance, spread_per_group
    same = torch.ones(4, 1, 2, 2)
    assert mean_pairwise_distance(same) == 0.0
    pair = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    assert abs(mean_pairwise_distance(pair) - 1.0) < 1e-6             # RMS distance of 0s and 1s
    s = spread_per_group(torch.cat([same, torch.cat([pair, pair])]), 4)
    assert s.shape == (2,) and s[0] == 0 and abs(s[1] - 4 / 6) < 1e-6  # 4 of the 6 pairs differ by 1
    with pytest.raises(ValueError, match="groups of 3"):
        spread_per_group(same, 3)
    with pytest.raises(ValueError, match="n_per_group"):
        spread_per_group(same, 1)


def test_comparisons_refuse_bad_n_before_sampling():
    from course_lib.measures.comparisons import compare_with_pixels, few_step_race
    boom = lambda *a, **k: (_ for _ in ()).throw(AssertionError("sampled"))
    with pytest.raises(ValueError, match="n must be"):
        few_step_race(boom, boom, None, None, n=0, w_flow=1.5, w_ddpm=3.0)
    with pytest.raises(ValueError, match="n must be"):
        compare_with_pixels(None, None, None, n=-1, guidance=3.0, steps=5)


# ------------------------------------------------------------------ appendix A1: Part 2's bugs
def _flipped_euler(model, x, steps=5):
    """Euler in the other papers' convention (noise at t = 0, t increasing) used with the course's models."""
    ts = torch.linspace(0, 1, steps + 1).tolist()
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * model(x, torch.full((len(x),), t * 1000.0))
    return x


def test_check_flow_oracle_passes_euler_and_heun_and_catches_the_flipped_convention():
    import functools
    from course_lib.diffusion import flow
    from course_lib.measures.diagnostics import check_flow_oracle
    x0 = torch.rand(1, 1, 8, 8) * 2 - 1
    for sampler in (functools.partial(flow.euler_sample, steps=1), functools.partial(flow.euler_sample, steps=7),
                    functools.partial(flow.heun_sample, steps=3)):
        assert check_flow_oracle(sampler, x0)
    bad = check_flow_oracle(_flipped_euler, x0)
    assert not bad and "time convention" in bad.message
    with pytest.raises(ValueError, match="one image"):
        check_flow_oracle(flow.euler_sample, x0[0])


def test_check_embedding_region_tells_text_from_image_embeddings():
    from course_lib.measures.diagnostics import check_embedding_region
    g = torch.Generator().manual_seed(0)
    centre = torch.nn.functional.normalize(torch.randn(1, 16, generator=g), dim=-1)
    bank = torch.nn.functional.normalize(centre + 0.2 * torch.randn(200, 16, generator=g), dim=-1)
    other = torch.nn.functional.normalize(-centre + 0.2 * torch.randn(20, 16, generator=g), dim=-1)
    assert check_embedding_region(bank[:20] + 0.01, bank)
    found = check_embedding_region(other, bank)
    assert not found and found.values["off_region"] == 1.0
    with pytest.raises(ValueError, match="same D"):
        check_embedding_region(other[:, :8], bank)
