"""The output weight stored column-major and the embeddings' sparse gradients (ablate.engine.gradients): each
against the computation it replaces — the row-major weight under PyTorch's fused SGD, dense gradients clipped by
torch.nn.utils.clip_grad_norm_."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest
import torch

from ablate.core.config_reading import build_config
from ablate.data.batching import iterate_batches
from ablate.engine.gradients import clip_grad_norm_, sparse_embeddings_allowed
from ablate.engine.run import build, prepare
from ablate.engine.train import Trainer
from ablate.engine.train_state import load_optimizer_state, make_optimizer
from ablate.models import kernels as K
from ablate.models.kernel_choice import shapes_of
from conftest import tiny_overrides

SGD = {"train.optimizer": "sgd", "train.lr": 1.0, "train.grad_clip": 0.5}  # a clip that acts on every step


def _setup(**overrides):
    config = build_config(tiny_overrides(**{**SGD, **overrides}))
    prepared = prepare(config)
    torch.manual_seed(0)
    return config, prepared, build(config, prepared)


def _train(model, config, prepared, kernels: K.Kernels, steps: int = 4) -> dict[str, torch.Tensor]:
    """`steps` Trainer steps from one random state (dropout masks and z draws repeat), the parameters after."""
    with K.using(kernels):
        trainer = Trainer(model, [], prepared.splits["train"], prepared.splits["valid"], prepared.tokenizer.framing,
                          config.train, torch.device("cpu"), 0, 32)
        batches = iterate_batches(prepared.splits["train"], prepared.tokenizer.framing, 32, random.Random(0))
        torch.manual_seed(1)
        for batch in batches[:steps]:
            trainer.step([batch], batches)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_the_lstm_output_weight_is_column_major_with_the_values_a_seed_gave_row_major(monkeypatch):
    config, prepared, model = _setup()
    weight = model.decoder.out.weight
    assert not weight.is_contiguous() and weight.t().is_contiguous()
    monkeypatch.setattr("ablate.models.lstm.column_major", lambda w: w)  # the layout before
    torch.manual_seed(0)
    rows = build(config, prepared)
    assert rows.decoder.out.weight.is_contiguous()
    for (name, a), (_, b) in zip(model.named_parameters(), rows.named_parameters()):
        assert torch.equal(a, b), name
    assert shapes_of(model, 32, 10.0).weight_columns and not shapes_of(rows, 32, 10.0).weight_columns


@pytest.mark.parametrize("kernels", [K.Kernels(), K.Kernels(logits="blas", grad_h="blas", grad_w="blas"),
                                     K.Kernels(grad_h="onednn-view", grad_w="onednn"), K.Kernels(output="plain")],
                         ids=["defaults", "blas", "onednn-view", "plain"])
def test_the_column_major_weight_trains_to_the_values_of_the_row_major_one(kernels):
    """Every output-layer path, plain SGD with clipping: the same parameters to the last bit (a layout is not
    arithmetic; SGD steps the column-major weight on its own, the fused kernel steps the rest)."""
    if kernels.logits == "onednn" and not K.ONEDNN:
        pytest.skip("this torch build has no oneDNN")
    config, prepared, model = _setup()
    rows = copy.deepcopy(model)
    rows.decoder.out.weight.data = rows.decoder.out.weight.data.contiguous()
    assert len(make_optimizer(model, config.train).param_groups) == 2
    assert len(make_optimizer(rows, config.train).param_groups) == 1
    start = {name: p.detach().clone() for name, p in rows.named_parameters()}
    after_columns, after_rows = _train(model, config, prepared, kernels), _train(rows, config, prepared, kernels)
    for name in after_rows:
        assert torch.equal(after_columns[name], after_rows[name]), name
        assert not torch.equal(after_rows[name], start[name]), name  # every parameter moved
    assert not model.decoder.out.weight.is_contiguous()  # the step kept the layout


def test_sparse_embedding_gradients_train_as_dense_ones():
    """Plain SGD with the clip acting: sparse and dense embedding gradients give the same parameters (to float
    rounding: the clip's norm sums in another order) — and the embedding rows no batch used stay exactly put."""
    config, prepared, model = _setup()
    assert sparse_embeddings_allowed(model, config.train)
    dense_model = copy.deepcopy(model)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    sparse = _train(model, config, prepared, dataclasses.replace(K.Kernels(), embedding_grads="sparse"))
    assert all(e.sparse for e in model.word_embeddings())
    dense = _train(dense_model, config, prepared, K.Kernels())
    assert not any(e.sparse for e in dense_model.word_embeddings())
    for name in dense:
        assert torch.allclose(sparse[name], dense[name], rtol=1e-5, atol=1e-7), name
        assert not torch.equal(dense[name], start[name]), name  # every parameter moved
    unused = (dense["decoder.embed.weight"] == start["decoder.embed.weight"]).all(1)
    assert 0 < int(unused.sum()) < unused.numel()
    assert torch.equal(sparse["decoder.embed.weight"][unused], start["decoder.embed.weight"][unused])


def test_sparse_gradients_are_clipped_as_their_dense_form():
    """clip_grad_norm_ over a sparse gradient (a row looked up twice) and a dense one against PyTorch's clip over
    both densified."""
    embedding = torch.nn.Embedding(12, 5, sparse=True)
    linear = torch.nn.Linear(5, 3)
    (linear(embedding(torch.tensor([3, 7, 3, 0]))) ** 2).sum().backward()
    reference = [embedding.weight.grad.to_dense(), linear.weight.grad.clone(), linear.bias.grad.clone()]
    reference_params = [torch.nn.Parameter(torch.zeros_like(g)) for g in reference]
    for param, grad in zip(reference_params, reference):
        param.grad = grad
    expected = torch.nn.utils.clip_grad_norm_(reference_params, 0.1)
    total = clip_grad_norm_([embedding.weight, *linear.parameters()], 0.1)
    assert total == pytest.approx(float(expected), rel=1e-6) and float(total) > 0.1
    assert embedding.weight.grad.is_sparse
    assert torch.allclose(embedding.weight.grad.to_dense(), reference_params[0].grad, atol=1e-7)
    assert torch.allclose(linear.weight.grad, reference_params[1].grad, atol=1e-7)


def test_sparse_gradients_only_under_plain_sgd():
    """Momentum, weight decay and Adam touch rows a batch did not use: their embeddings stay dense, one group."""
    for overrides in ({"train.momentum": 0.9}, {"train.weight_decay": 1e-4}, {"train.optimizer": "adam"}):
        config, prepared, model = _setup(**overrides)
        assert not sparse_embeddings_allowed(model, config.train)
        _train(model, config, prepared, dataclasses.replace(K.Kernels(), embedding_grads="sparse"), steps=1)
        assert not any(e.sparse for e in model.word_embeddings())
        assert len(make_optimizer(model, config.train).param_groups) == 1


def test_a_plain_sgd_checkpoint_of_one_group_loads_into_the_grouped_optimiser():
    """Checkpoints written before make_optimizer grouped plain SGD's parameters resume (SGD keeps no state); an
    optimiser with state refuses a mismatch as before."""
    config, _, model = _setup()
    one_group = torch.optim.SGD(model.parameters(), lr=0.25).state_dict()
    grouped = make_optimizer(model, config.train, lr_scale=0.25)
    load_optimizer_state(grouped, one_group)
    assert [g["lr"] for g in grouped.param_groups] == [0.25, 0.25]
    adam = torch.optim.Adam(list(model.parameters())[:2])
    with pytest.raises(ValueError):
        load_optimizer_state(adam, torch.optim.Adam(model.parameters()).state_dict())


def test_a_plain_sgd_run_with_sparse_embedding_gradients_resumes_exactly(tmp_path, monkeypatch):
    """Through `execute` (the row records the choice): one epoch, its checkpoint, the second epoch resumed from it
    ends where the uninterrupted run ends — the grouped optimiser and the column-major weight round-trip."""
    from ablate.engine.run import execute
    from ablate.engine.train import train

    sparse = dataclasses.replace(K.Kernels(), embedding_grads="sparse")
    monkeypatch.setenv("ABLATE_KERNELS", sparse.describe())  # every field set: nothing is timed
    config = build_config(tiny_overrides(**{**SGD, "train.epochs": 2}))
    straight = execute(config, tmp_path / "a", progress=False, save_model=False).row
    assert "embedding grads sparse" in straight["kernels"]

    checkpoint = tmp_path / "ckpt.pt"
    one_epoch = build_config(tiny_overrides(**{**SGD, "train.epochs": 1}))
    prepared = prepare(one_epoch)
    model = build(one_epoch, prepared)
    with K.using(sparse):
        train(model, [], prepared.splits["train"], prepared.splits["valid"], prepared.tokenizer.framing,
              one_epoch.train, torch.device("cpu"), one_epoch.seed, checkpoint=checkpoint, progress=False)
    saved = torch.load(checkpoint, weights_only=False)
    assert len(saved["optimizer"]["param_groups"]) == 2
    saved["state"]["finished"] = False
    torch.save(saved, checkpoint)
    resumed = execute(config, tmp_path / "b", checkpoint=checkpoint, progress=False, save_model=False).row
    for metric in ("nll", "kl", "mi", "au"):
        assert resumed[f"test.{metric}"] == straight[f"test.{metric}"], metric
