"""Kernels chosen by measurement (ablate.models.kernels): every path computes the same values, the fastest candidate
is chosen and cached per machine, $ABLATE_KERNELS overrides, and the choice is recorded in the row."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

from ablate.models import kernel_choice as C
from ablate.models import kernels as K
from ablate.models.output_layer import token_log_probs
from tests.conftest import tiny_overrides

needs_onednn = pytest.mark.skipif(not K.ONEDNN, reason="this torch build has no oneDNN")


def inputs(seed: int, n: int = 45, h: int = 16, v: int = 37, bias: bool = True):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen)
    weight = torch.randn(v, h, generator=gen) * 0.5
    b = torch.randn(v, generator=gen) if bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    return hidden, weight, b, targets


def reference(hidden, weight, bias, targets):
    """The plain log-softmax in float64, by autograd."""
    logits = hidden.double() @ weight.double().t() + (0 if bias is None else bias.double())
    return logits.log_softmax(-1).gather(1, targets.unsqueeze(1)).squeeze(1)


def values_and_grads(fn, hidden, weight, bias, scale):
    leaves = [t.clone().requires_grad_(True) for t in (hidden, weight) + ((bias,) if bias is not None else ())]
    out = fn(*leaves, *([None] if bias is None else []))
    (out.double() * scale).sum().backward()
    return [out.detach().double()] + [t.grad.double() for t in leaves]


TRAINING = [K.Kernels(output="plain")] + [
    K.Kernels(logits=a, grad_h=b, grad_w=c)
    for a, b, c in itertools.product(K.PRODUCT_BACKENDS, K.GRAD_H_BACKENDS, K.GRAD_W_BACKENDS)]


@pytest.mark.parametrize("kernels", TRAINING, ids=lambda k: k.describe().split(";")[0])
@pytest.mark.parametrize("weights", ["uniform", "per_position"])
def test_every_training_path_gives_the_plain_values_and_gradients(kernels, weights):
    hidden, weight, bias, targets = inputs(0)
    scale = torch.full((45,), 1 / 7, dtype=torch.float64) if weights == "uniform" else \
        torch.linspace(-1.0, 2.0, 45, dtype=torch.float64)
    ours = values_and_grads(lambda h, w, b: token_log_probs(h, w, b, targets, block=8, kernels=kernels),
                            hidden, weight, bias, scale)
    expected = values_and_grads(lambda h, w, b: reference(h, w, b, targets), hidden, weight, bias, scale)
    for a, b in zip(ours, expected):
        assert torch.allclose(a, b, atol=2e-5), kernels.describe()


@pytest.mark.parametrize("backend", K.EVAL_BACKENDS)
def test_every_evaluation_path_gives_the_same_log_probabilities(backend):
    hidden, weight, bias, targets = inputs(1, n=200)
    with torch.no_grad():
        out = token_log_probs(hidden, weight, bias, targets, block=16, kernels=K.Kernels(eval_logits=backend))
    assert torch.allclose(out.double(), reference(hidden, weight, bias, targets), atol=2e-5)


def test_bf16_autocast_runs_the_products_in_bf16_close_to_fp32():
    """Under a CPU bf16 autocast the blocks' products are bf16 (fp32 accumulation): within bf16's rounding of fp32."""
    hidden, weight, bias, targets = inputs(2, n=64, h=32, v=50)
    scale = torch.full((64,), 1 / 8, dtype=torch.float64)
    for kernels in TRAINING[1:3]:
        def low(h, w, b):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return token_log_probs(h, w, b, targets, block=16, kernels=kernels)
        ours = values_and_grads(low, hidden, weight, bias, scale)
        expected = values_and_grads(lambda h, w, b: reference(h, w, b, targets), hidden, weight, bias, scale)
        assert ours[0].dtype == torch.float64 and ours[2].shape == weight.shape
        for a, b in zip(ours, expected):
            assert torch.allclose(a, b, rtol=0.03, atol=0.03)
        assert not torch.equal(ours[0], expected[0])  # it did run in bf16


def test_the_lstm_paths_agree():
    from ablate.models.lstm import LSTMConfig, LSTMVAE

    torch.manual_seed(0)
    model = LSTMVAE(30, LSTMConfig(emb_dim=8, enc_hidden=12, dec_hidden=12, nz=3, dec_dropout_in=0.0,
                                   dec_dropout_out=0.0))
    ids = torch.randint(3, 30, (5, 7))
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[1, 5:] = False
    results = []
    for backend in K.LSTM_BACKENDS:
        model.zero_grad()
        with K.using(K.Kernels(lstm=backend)):
            mu, _ = model.encoder(ids, mask)
            states = model.decoder.states(ids, mu)[0]
        (states.square().sum() + mu.sum()).backward()
        results.append([mu.detach(), states.detach()] + [p.grad.clone() for p in model.parameters()
                                                         if p.grad is not None])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5)


SHAPES = C.Shapes(vocab=50, hidden=8, positions=40, block=16, lstms=((8, 8, 4, 10),))


def fake_timer(costs: dict[str, float], calls: list[str]):
    def timer(label, fn, best):
        calls.append(label)
        fn()  # every candidate runs (a broken one is not chosen)
        return costs.get(label, 1.0)
    return timer


@needs_onednn
def test_the_fastest_candidate_is_chosen_per_product_and_cached(tmp_path, monkeypatch):
    monkeypatch.delenv(C.KERNELS_ENV, raising=False)
    cache = tmp_path / "kernels.json"
    costs = {"logits:blas": 0.5, "grad_h:onednn": 0.2, "grad_w:blas": 0.1, "eval_logits:onednn-packed": 0.3,
             "output:plain": 0.4, "lstm:aten": 0.9}
    calls: list[str] = []
    chosen = C.choose(SHAPES, torch.device("cpu"), threads=2, timer=fake_timer(costs, calls), cache=cache)
    assert (chosen.output, chosen.logits, chosen.grad_h, chosen.grad_w, chosen.eval_logits, chosen.lstm) == \
        ("plain", "blas", "onednn", "blas", "onednn-packed", "aten")
    assert chosen.how == "measured" and "output plain" in chosen.describe()
    assert {c.split(":")[0] for c in calls} == {"logits", "grad_h", "grad_w", "eval_logits", "output", "lstm"}
    calls.clear()
    again = C.choose(SHAPES, torch.device("cpu"), threads=2, timer=fake_timer({}, calls), cache=cache)
    assert calls == [] and again.how == "cached" and again.lstm == "aten"
    other_threads = C.choose(SHAPES, torch.device("cpu"), threads=1, timer=fake_timer({}, calls), cache=cache)
    assert calls and other_threads.how == "measured"  # another key: measured again
    assert len(json.loads(cache.read_text())) == 2


def test_measuring_leaves_the_global_random_stream_where_it_was(tmp_path, monkeypatch):
    """A run measures its kernels after seeding (ablate.engine.run.execute): the same seed must train the same
    whether the choice was measured or read from the cache (a measured run of full_grid's prokhorov2019 seed 0
    trained on another dropout stream: test NLL 70.94 against 71.43 from the cache)."""
    monkeypatch.delenv(C.KERNELS_ENV, raising=False)
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    chosen = C.choose(SHAPES, torch.device("cpu"), threads=2, timer=fake_timer({}, []), cache=tmp_path / "k.json")
    assert chosen.how == "measured"
    assert torch.equal(torch.rand(5), expected)


ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512vl

processor\t: 1
cpu family\t: 99
model name\t: not the first
"""


def test_one_cpu_name_for_two_generations_keeps_two_cache_keys(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text(ZEN4)
    monkeypatch.setattr(C, "CPUINFO", info)
    assert C.cpu_model() == "AMD EPYC (family 25, model 17)"
    assert C.cpu_flags() == ["avx2", "avx512f", "avx512_bf16"]
    zen4 = C.cache_key(SHAPES, 2)
    info.write_text(ZEN4.replace(": 25", ": 26", 1).replace(": 17", ": 2", 1))
    assert C.cpu_model() == "AMD EPYC (family 26, model 2)" and C.cache_key(SHAPES, 2) != zen4
    info.write_text(ZEN4.replace(" avx512_bf16", ""))
    assert C.cpu_flags() == ["avx2", "avx512f"] and C.cache_key(SHAPES, 2) != zen4
    monkeypatch.setattr(C, "CPUINFO", tmp_path / "absent")
    assert C.cpu_model() and C.cpu_flags() == []


def test_a_damaged_cache_is_measured_again_and_a_gpu_is_not_timed(tmp_path, monkeypatch):
    monkeypatch.delenv(C.KERNELS_ENV, raising=False)
    cache = tmp_path / "kernels.json"
    cache.write_text("{not json")
    calls: list[str] = []
    assert C.choose(SHAPES, torch.device("cpu"), timer=fake_timer({}, calls), cache=cache).how == "measured"
    key = next(iter(json.loads(cache.read_text())))
    cache.write_text(json.dumps({key: {"lstm": "fast"}}))  # a record of another version
    assert C.choose(SHAPES, torch.device("cpu"), timer=fake_timer({}, calls), cache=cache).how == "measured"
    calls.clear()
    gpu = C.choose(SHAPES, torch.device("cuda"), timer=fake_timer({}, calls), cache=tmp_path / "none.json")
    assert calls == [] and gpu.output == "plain" and gpu.how == "gpu"


def test_processes_starting_together_measure_once_and_share_the_choice(tmp_path, monkeypatch):
    """A sweep's workers start together on a fresh cache: the second waits for the first's measurement and reads
    its choice (it would otherwise measure too, on shared cores, and might choose otherwise). Two threads stand in
    for the two processes (flock locks per open file, so they exclude each other as processes do)."""
    import threading
    import time

    monkeypatch.delenv(C.KERNELS_ENV, raising=False)
    cache = tmp_path / "kernels.json"
    first_is_measuring = threading.Event()
    first_calls: list[str] = []
    second_calls: list[str] = []

    def slow_timer(label, fn, best):
        first_calls.append(label)
        first_is_measuring.set()
        time.sleep(0.05)  # the second process arrives while this one measures
        fn()
        return 0.1 if label == "lstm:aten" else 1.0

    results = {}
    first = threading.Thread(target=lambda: results.__setitem__(
        "first", C.choose(SHAPES, torch.device("cpu"), threads=2, timer=slow_timer, cache=cache)))
    first.start()
    assert first_is_measuring.wait(30)
    results["second"] = C.choose(SHAPES, torch.device("cpu"), threads=2, timer=fake_timer({}, second_calls),
                                 cache=cache)
    first.join(30)
    assert first_calls and second_calls == []
    assert results["first"].how == "measured" and results["second"].how == "cached"
    assert dataclasses.replace(results["second"], how="measured") == results["first"]
    assert results["first"].lstm == "aten"  # (the choice the slow timer made, not a default)


def test_the_environment_sets_kernels_or_says_what_it_accepts(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setenv(C.KERNELS_ENV, "default")
    assert C.choose(SHAPES, torch.device("cpu"), timer=fake_timer({}, calls), cache=tmp_path / "c.json") == K.Kernels()
    assert calls == []
    monkeypatch.setenv(C.KERNELS_ENV, "lstm=aten,grad_w=blas")
    chosen = C.choose(SHAPES, torch.device("cpu"), timer=fake_timer({"lstm:onednn": 0.0}, calls),
                      cache=tmp_path / "c.json")
    assert (chosen.lstm, chosen.grad_w, chosen.how) == ("aten", "blas", "set")
    assert not any(c.startswith(("lstm", "grad_w")) for c in calls)  # what is set is not timed
    monkeypatch.setenv(C.KERNELS_ENV, "lstm=cudnn")
    with pytest.raises(ValueError, match=r"\$ABLATE_KERNELS: 'lstm=cudnn' is not one of .*lstm=onednn\|aten"):
        C.choose(SHAPES, torch.device("cpu"), timer=fake_timer({}, calls), cache=tmp_path / "c.json")


def test_a_rows_kernels_value_read_back_sets_every_field():
    """`Kernels.describe` (the row's `kernels` column) read back by $ABLATE_KERNELS: every combination round-trips,
    rows of older versions (no Linear layers, no embedding gradients) read with those at their defaults, anything
    else is refused."""
    fields = ("output", "logits", "grad_h", "grad_w", "eval_logits", "lstm", "linear", "eval_linear",
              "embedding_grads")
    for output, logits, grad_h, grad_w, eval_logits, lstm, linear, embedding_grads in itertools.product(
            ("blocks", "plain"), K.PRODUCT_BACKENDS, K.GRAD_H_BACKENDS, K.GRAD_W_BACKENDS, K.EVAL_BACKENDS,
            K.LSTM_BACKENDS, K.PRODUCT_BACKENDS, K.EMBEDDING_GRADS):
        kernels = K.Kernels(output=output, logits=logits, grad_h=grad_h, grad_w=grad_w, eval_logits=eval_logits,
                            lstm=lstm, linear=linear, eval_linear="onednn", embedding_grads=embedding_grads,
                            how="measured")
        read = K.Kernels(**C.parse_setting(kernels.describe()), how="set")
        assert read.describe() == kernels.describe().replace("; measured", "; set")
        if output == "blocks":  # (plain does not name the blocks' products: they take the defaults)
            assert [getattr(read, f) for f in fields] == [getattr(kernels, f) for f in fields]
    older = "output blocks (logits onednn, ∂h onednn-view, ∂W onednn-t); eval onednn-packed; lstm aten; measured"
    assert C.parse_setting(older) == {"output": "blocks", "logits": "onednn", "grad_h": "onednn-view",
                                      "grad_w": "onednn-t", "eval_logits": "onednn-packed", "lstm": "aten",
                                      "linear": "blas", "eval_linear": "blas", "embedding_grads": "dense"}
    before_eval_linear = "output plain; eval blas; lstm onednn; linear onednn; cached"  # evaluation ran `linear`
    assert C.parse_setting(before_eval_linear)["eval_linear"] == "onednn"
    assert K.arithmetic(before_eval_linear) == ("output plain; eval blas; lstm onednn; linear onednn (eval onednn); "
                                                "embedding grads dense")
    assert K.arithmetic("not a description") == "not a description"
    with pytest.raises(ValueError, match=r"\$ABLATE_KERNELS: 'output blocks \(logits gpu.*not a result row's"):
        C.parse_setting("output blocks (logits gpu); eval blas; lstm aten")
    with pytest.raises(ValueError, match=r"'lstm=cudnn' is not one of"):  # well-formed, but no such kernel
        C.parse_setting("output plain; eval blas; lstm cudnn; linear blas (eval blas); measured")


@needs_onednn
def test_a_rows_kernels_value_repeats_its_arithmetic(tmp_path, monkeypatch):
    """A row's `kernels` value given back through $ABLATE_KERNELS runs those kernels and repeats the row's values
    exactly (other kernels round otherwise, and training goes elsewhere from there: README.md, the first look)."""
    from ablate.core.config_reading import build_config
    from ablate.engine.run import execute

    monkeypatch.setenv(C.CACHE_ENV, str(tmp_path / "kernels.json"))

    def run(setting: str, name: str) -> dict:
        monkeypatch.setenv(C.KERNELS_ENV, setting)
        row = execute(build_config(tiny_overrides()), tmp_path / name, progress=False, save_model=False).row
        assert row["status"] == "ok"
        return row

    first = run("output=blocks,logits=blas,grad_h=onednn-view,grad_w=onednn-t,eval_logits=onednn,lstm=aten", "first")
    again = run(first["kernels"], "again")
    assert again["kernels"] == first["kernels"]
    assert (again["test.nll"], again["test.kl"]) == (first["test.nll"], first["test.kl"])


def test_a_run_records_its_kernels_and_cpu_in_the_row(tmp_path, monkeypatch):
    from ablate.core.config_reading import build_config
    from ablate.engine.run import execute

    monkeypatch.setenv(C.KERNELS_ENV, "lstm=aten,output=plain")
    monkeypatch.setenv(C.CACHE_ENV, str(tmp_path / "kernels.json"))
    row = execute(build_config(tiny_overrides()), tmp_path / "run", progress=False, save_model=False).row
    assert row["status"] == "ok"
    assert row["kernels"].startswith("output plain; eval ") and "lstm aten; linear " in row["kernels"] and row["kernels"].endswith("; set")
    assert row["cpu"] == C.cpu_model() and row["kernels"] == K.active().describe()
    monkeypatch.setenv(C.KERNELS_ENV, "output=fast")
    failed = execute(build_config(tiny_overrides()), tmp_path / "bad", progress=False, save_model=False).row
    assert failed["status"] == "failed" and "$ABLATE_KERNELS: 'output=fast'" in failed["error_message"]


@pytest.mark.parametrize("flags, expected", [("avx2 avx512f avx512_bf16", "bf16"), ("avx2 avx512f", "fp32")])
def test_precision_auto_trains_in_bf16_only_where_the_cpu_has_it(tmp_path, monkeypatch, flags, expected):
    from ablate.core.config_reading import build_config
    from ablate.engine.run import execute

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n")
    monkeypatch.setattr(C, "CPUINFO", info)
    monkeypatch.setenv(C.KERNELS_ENV, "default")
    metrics = ("test.nll", "test.kl", "test.mi", "train_tokens")
    auto = execute(build_config(tiny_overrides(**{"train.precision": "auto"})), tmp_path / "auto", progress=False,
                   save_model=False).row
    asked = execute(build_config(tiny_overrides(**{"train.precision": expected})), tmp_path / "asked",
                    progress=False, save_model=False).row
    assert auto["status"] == asked["status"] == "ok"
    assert auto["precision"] == asked["precision"] == expected and auto["config.train.precision"] == "auto"
    assert [auto[m] for m in metrics] == [asked[m] for m in metrics]  # the same run as asking for it by name


def test_mask_dropout_keeps_one_minus_p_scaled_and_is_the_identity_in_eval():
    from ablate.models.dropout import MaskDropout

    from ablate.models.dropout import keep_probability

    torch.manual_seed(0)
    drop = MaskDropout(0.3)
    keep_p = keep_probability(0.3)
    assert keep_p == 1 - 19661 / 65536 and abs(keep_p - 0.7) < 2 ** -17  # p at 16-bit resolution
    assert keep_probability(0.5) == 0.5 and keep_probability(0.0) == 1.0 and keep_probability(1.0) == 0.0
    x = torch.ones(200_001, requires_grad=True)  # not a multiple of 4: the last draw's words are cut
    y = drop(x)
    kept = y != 0
    assert abs(kept.double().mean().item() - keep_p) < 0.005  # 5 standard errors (0.001 each)
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / keep_p))
    for p in (0.1, 0.5, 0.9):  # every word position of an int64 draw is uniform (the sign bits too)
        kept_at = MaskDropout(p).train()(torch.ones(4 * 50_000)).view(-1, 4) != 0  # column j: word j of each draw
        for share in kept_at.double().mean(0).tolist():
            assert abs(share - keep_probability(p)) < 6 * (keep_probability(p) * p / 50_000) ** 0.5 + 1e-9, (p, share)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # ∂y/∂x is the same scaled mask
    drop.eval()
    assert drop(x) is x and MaskDropout(0.0).train()(x) is x
    assert torch.equal(MaskDropout(1.0).train()(x.detach()), torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_a_mask_read_through_its_bytes_is_the_mask_cast(dtype):
    """mask_values (the mask's bytes cast) gives PyTorch's own bool cast bit for bit, from a comparison's mask and
    from a mask of all True / all False."""
    from ablate.models.dropout import keep_mask, mask_values

    torch.manual_seed(0)
    masks = (keep_mask(torch.empty(3, 7, 11), 0.3), torch.ones(5, dtype=torch.bool),
             torch.zeros(5, dtype=torch.bool), torch.randn(4, 6) > 0)
    for mask in masks:
        assert torch.equal(mask_values(mask, dtype), mask.to(dtype))
        assert mask_values(mask, dtype).dtype == dtype


def test_transformers_models_get_the_cheaper_dropout():
    pytest.importorskip("transformers")
    from transformers import T5Config, T5ForConditionalGeneration

    from ablate.models.dropout import MaskDropout, cheaper_dropout

    net = T5ForConditionalGeneration(T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                              num_heads=4, dropout_rate=0.2))
    before = sum(type(m) is torch.nn.Dropout for m in net.modules())
    assert before > 0 and cheaper_dropout(net) == before
    assert not any(type(m) is torch.nn.Dropout for m in net.modules())
    assert all(m.p == 0.2 for m in net.modules() if isinstance(m, MaskDropout))


@pytest.mark.parametrize("backend", K.PRODUCT_BACKENDS)
def test_chosen_linear_gives_nn_linear_values_and_gradients(backend):
    torch.manual_seed(0)
    reference_layer = torch.nn.Linear(24, 40)
    layer = torch.nn.Linear(24, 40)
    layer.load_state_dict(reference_layer.state_dict())
    assert K.chosen_linears(torch.nn.Sequential(layer)) == 1 and isinstance(layer, K.ChosenLinear)
    x = torch.randn(3, 7, 24)
    results = []
    for module, kernels in ((reference_layer, K.Kernels()), (layer, K.Kernels(linear=backend))):
        inputs = x.clone().requires_grad_(True)
        with K.using(kernels):
            out = module(inputs)
        (out * torch.linspace(-1, 1, 40)).sum().backward()
        results.append([out.detach(), inputs.grad, module.weight.grad, module.bias.grad])
    assert results[1][0].shape == (3, 7, 40)
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5)
    assert set(layer.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("backend", K.PRODUCT_BACKENDS)
def test_without_autograd_a_chosen_linear_runs_the_eval_choice_with_the_same_values(backend, monkeypatch):
    """Evaluation's forward (no autograd) goes through `eval_linear`, training's through `linear`; both give
    F.linear's values."""
    torch.manual_seed(1)
    layer = torch.nn.Linear(24, 40)
    expected = torch.nn.functional.linear(x := torch.randn(3, 7, 24), layer.weight, layer.bias)
    K.chosen_linears(torch.nn.Sequential(layer))
    used: list[str] = []
    product = K.product_nt
    monkeypatch.setattr(K, "product_nt", lambda *a, **k: used.append(k.get("backend", a[-1])) or product(*a, **k))
    other = "blas" if backend == "onednn" else "onednn"
    with K.using(K.Kernels(linear=other, eval_linear=backend)), torch.no_grad():
        out = layer(x)
    assert torch.allclose(out, expected, atol=1e-5)
    if K.ONEDNN:
        assert used == ([backend] if backend == "onednn" else [])  # blas is F.linear itself
        used.clear()
        with K.using(K.Kernels(linear=backend, eval_linear=other)):
            layer(x.requires_grad_(True))
        assert used == ([backend] if backend == "onednn" else [])


def test_a_transformers_model_gets_chosen_linears_and_their_shapes_are_timed(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from transformers import T5Config, T5ForConditionalGeneration

    net = T5ForConditionalGeneration(T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                              num_heads=4))
    plain = sum(type(m) is torch.nn.Linear for m in net.modules())
    assert K.chosen_linears(net) == plain and isinstance(net.lm_head, K.ChosenLinear)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def output_layer(self):
            return net.lm_head.weight, None

    shapes = C.shapes_of(Wrapper(), batch_size=4, mean_tokens=6)
    assert shapes.linears == ((16, 16), (16, 32), (16, 40), (32, 16)) and shapes.lstms == ()
    assert shapes.eval_positions == 0  # no evaluation pass asked for: nothing timed for it
    monkeypatch.delenv(C.KERNELS_ENV, raising=False)
    calls: list[str] = []
    C.choose(shapes, torch.device("cpu"), timer=fake_timer({"linear:onednn": 0.0}, calls), cache=tmp_path / "k.json")
    assert {"linear:blas", "linear:onednn"} <= set(calls) or not K.ONEDNN
    assert not any(c.startswith("eval_linear") for c in calls)
    # evaluation's forward-only products, timed at an IW chunk's rows, in a bf16 run too (evaluation is fp32)
    shapes = C.shapes_of(Wrapper(), batch_size=4, mean_tokens=6, precision="bf16", eval_pairs=512)
    assert shapes.eval_positions == 512 * 6
    calls.clear()
    chosen = C.choose(shapes, torch.device("cpu"), timer=fake_timer({"eval_linear:onednn": 0.0}, calls),
                      cache=tmp_path / "k2.json")
    if K.ONEDNN:
        assert {"eval_linear:blas", "eval_linear:onednn"} <= set(calls) and not any(c == "linear:onednn" for c in calls)
        assert (chosen.linear, chosen.eval_linear) == ("blas", "onednn")
        assert "linear blas (eval onednn)" in chosen.describe()
