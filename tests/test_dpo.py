"""`dataforge train --objective dpo`: the sigmoid DPO loss (with the optional SFT term) equals TRL's
DPOTrainer loss on the same batch and reference log-probabilities; the answer tokens it scores are the ones
TRL scores; a hand-computed case; a run learns to prefer the chosen answers, and a resumed run keeps the
starting checkpoint as its reference."""

from __future__ import annotations

import math

import pytest
import torch

from dataforge.records import Preference, Record
from dataforge.train.config import TrainConfig
from dataforge.train.data import SEG_RESPONSE, SEG_TEMPLATE, PromptFormatter
from dataforge.train.dpo import Pair, PairExample, collate_pairs, dpo_loss
from dataforge.train.tiny import tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAIRS = [("Add the two numbers and give the result. 2 3", "The result is 5", "The answer is the sea"),
         ("Translate the word into French. sea", "mer", "the sea the wind the sun"),
         ("Summarize the text in one sentence. The moon and the sun.", "The sun and the moon.", "one two three"),
         ("Write a short poem about the sea and the wind.", "the sea the wind a poem", "seven eight nine ten")]
REF = torch.tensor([[-31.0, -40.5], [-12.25, -30.0], [-25.0, -24.0], [-19.5, -33.75]], dtype=torch.float64)


def test_the_loss_by_hand():
    logps = torch.tensor([-10.0, -14.0, -8.0, -7.0], dtype=torch.float64)  # chosen, rejected, chosen, rejected
    ref = torch.tensor([-11.0, -12.0, -8.5, -7.5], dtype=torch.float64)
    # pair 1: delta = (-10 + 11) - (-14 + 12) = 3; pair 2: delta = (-8 + 8.5) - (-7 + 7.5) = 0
    want = (-math.log(1 / (1 + math.exp(-0.1 * 3))) + math.log(2)) / 2
    parts = dpo_loss(logps, ref, beta=0.1)
    assert abs(float(parts["dpo"]) - want) < 1e-12
    assert float(parts["reward_accuracy"]) == 0.5 and abs(float(parts["reward_margin"]) - 0.15) < 1e-12


def _trl(tmp_path, tok, beta, sft_weight):
    import datasets
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in PAIRS]
    losses = ["sigmoid", "sft"] if sft_weight else ["sigmoid"]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, beta=beta, max_length=None,
                     loss_type=losses, loss_weights=[1.0, sft_weight] if sft_weight else None)
    trainer = DPOTrainer(model=tiny_llama(len(tok), seed=3), ref_model=tiny_llama(len(tok), seed=4), args=args,
                         processing_class=tok, train_dataset=datasets.Dataset.from_list(rows))
    examples = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(examples)
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = REF[:, 0].float(), REF[:, 1].float()
    trainer.precompute_ref_logps = True  # read the reference log-probabilities from the batch, as given
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, batch, return_outputs=False)
    return float(loss), examples


@pytest.mark.parametrize("beta,sft_weight", [(0.1, 0.0), (0.5, 0.3)])
def test_loss_equals_trls_dpo_trainer_on_the_same_batch_and_reference(tmp_path, beta, sft_weight):
    from dataforge.train.dpo import DPOObjective
    from dataforge.train.model import InstructModel

    tok = tiny_tokenizer(chat_template=True)
    trl_loss, examples = _trl(tmp_path, tok, beta, sft_weight)

    def side(prompt_ids, answer_ids, ref):
        ids = prompt_ids + answer_ids
        return PairExample(ids, [SEG_TEMPLATE] * len(prompt_ids) + [SEG_RESPONSE] * len(answer_ids),
                           [False] * len(prompt_ids) + [True] * len(answer_ids), ref_logp=ref)

    pairs = [Pair(side(e["prompt_ids"], e["chosen_ids"], float(REF[i, 0])),
                  side(e["prompt_ids"], e["rejected_ids"], float(REF[i, 1]))) for i, e in enumerate(examples)]
    cfg = TrainConfig(objective="dpo", dpo_beta=beta, dpo_sft_weight=sft_weight)
    model = InstructModel(tiny_llama(len(tok), seed=3), cfg.mods_dict(), 0, [])
    objective = DPOObjective(model, cfg, [], pad_id=tok.pad_token_id, device=torch.device("cpu"))
    objective.eval()
    batch = collate_pairs([[p.chosen, p.rejected] for p in pairs], tok.pad_token_id)
    ours = float(objective(batch)["loss"])
    assert abs(ours - trl_loss) < 1e-5, (ours, trl_loss)
    assert abs(trl_loss - math.log(2)) > 1e-2  # not the trivial value: the reference differs from the policy


def test_our_answer_tokens_are_the_ones_trl_scores(tmp_path):
    tok = tiny_tokenizer(chat_template=True)
    _, examples = _trl(tmp_path, tok, 0.1, 0.0)
    fmt = PromptFormatter(tok, "chat", max_length=256)
    for (prompt, chosen, _), e in zip(PAIRS, examples):
        ours = fmt.encode(Record(instruction=prompt, output=chosen))
        assert ours.input_ids == e["prompt_ids"] + e["chosen_ids"]
        assert [i for i, f in enumerate(ours.learn) if f] == list(range(len(e["prompt_ids"]), len(ours.input_ids)))


def _pair_records(n=24):
    out = []
    for i in range(n):
        p, c, r = PAIRS[i % len(PAIRS)]
        out.append(Record(instruction=f"{p} ({i})", output=c, preference=Preference(rejected=r, kind="scored")))
    return out


def test_dpo_training_prefers_the_chosen_answers_and_resumes_on_the_same_reference(tmp_path):
    from dataforge.io import write_records
    from dataforge.train import run_train

    src = tmp_path / "pairs.jsonl"
    write_records(src, _pair_records() + [Record(instruction="plain", output="no pair here")])
    cfg = TrainConfig(objective="dpo", dpo_beta=0.5, max_steps=6, batch_size=4, lr=3e-3, warmup_ratio=0.0,
                      eval_fraction=0.2, save_minutes=0, log_every=1)
    tok = tiny_tokenizer(chat_template=True)
    whole = run_train(src, tmp_path / "whole", cfg, progress=False, model=tiny_llama(len(tok), seed=1), tokenizer=tok)
    assert whole["objective"] == "dpo" and whole["dropped"] == {"no_preference": 1}
    assert whole["eval_reward_accuracy"] == 1.0 and whole["eval_loss"] < math.log(2) - 0.1
    first = __import__("json").loads((tmp_path / "whole" / "log.jsonl").read_text().splitlines()[0])
    assert abs(first["dpo"] - math.log(2)) < 1e-6  # step 1: the policy is the reference

    import shutil

    resumed = tmp_path / "resumed"
    run_train(src, resumed, cfg.model_copy(update={"save_every": 3}), progress=False,
              model=tiny_llama(len(tok), seed=1), tokenizer=tok)
    shutil.rmtree(resumed / "checkpoints" / "step-0000006")  # as if killed after the checkpoint of step 3
    rest = run_train(src, resumed, cfg.model_copy(update={"save_every": 3}), progress=False,
                     model=tiny_llama(len(tok), seed=1), tokenizer=tok)
    assert rest["resumed_from"].endswith("step-0000003") and rest["steps"] == 6
    # the reference is the starting checkpoint, not the step-3 weights it resumed from: the same run
    assert abs(rest["eval_loss"] - whole["eval_loss"]) < 1e-5


def test_options_of_the_sft_objective_are_refused_with_dpo():
    from dataforge.errors import DataforgeError

    with pytest.raises(DataforgeError, match="task_cls_weight, ewc_weight belong to the SFT objective"):
        TrainConfig(objective="dpo", task_cls_weight=0.1, ewc_weight=1.0)


def test_dpo_accumulation_of_equal_micro_batches_equals_one_batch(tmp_path):
    """DPO averages over a micro-batch's pairs; with equally many pairs per micro-batch, 2 micro-batches of 2
    pairs give the gradient of 1 batch of 4 (AdamW's first moment after one unclipped step, m = 0.1 * g)."""
    from safetensors.torch import load_file

    from dataforge.io import write_records
    from dataforge.train import run_train

    src = tmp_path / "pairs.jsonl"
    write_records(src, _pair_records(8))
    tok = tiny_tokenizer(chat_template=True)
    for name, bs, acc in (("big", 4, 1), ("acc", 2, 2)):
        cfg = TrainConfig(objective="dpo", dpo_beta=0.5, max_steps=1, batch_size=bs, grad_accum=acc,
                          max_grad_norm=0.0, eval_fraction=0.0, save_minutes=0)
        run_train(src, tmp_path / name, cfg, progress=False, model=tiny_llama(len(tok), seed=1), tokenizer=tok)
    a, b = (load_file(str(tmp_path / n / "checkpoints" / "step-0000001" / "optimizer.safetensors")) for n in ("big", "acc"))
    moments = [k for k in a if k.endswith("exp_avg")]
    assert len(moments) > 10
    for k in moments:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-9), k
    logs = [__import__("json").loads((tmp_path / n / "log.jsonl").read_text().splitlines()[0]) for n in ("big", "acc")]
    assert abs(logs[0]["loss"] - logs[1]["loss"]) < 1e-6 and abs(logs[0]["dpo"] - math.log(2)) < 1e-6


def test_records_dropped_from_the_eval_split_are_counted_too(tmp_path):
    """A record without a preference is dropped and counted wherever the id hash puts it, eval included."""
    from dataforge.io import write_records
    from dataforge.train import run_train
    from dataforge.train.data import split_eval

    records = _pair_records(12) + [Record(instruction=f"plain {i}", output="no pair here") for i in range(8)]
    cfg = TrainConfig(objective="dpo", max_steps=1, batch_size=4, eval_fraction=0.25, save_minutes=0)
    train, held = split_eval(records, cfg.eval_fraction, cfg.eval_max)
    plain_held = sum(r.preference is None for r in held)
    assert 0 < plain_held < len(held)                        # the case this test is about
    src = tmp_path / "pairs.jsonl"
    write_records(src, records)
    tok = tiny_tokenizer(chat_template=True)
    s = run_train(src, tmp_path / "run", cfg, progress=False, model=tiny_llama(len(tok), seed=1), tokenizer=tok)
    assert s["dropped"] == {"no_preference": 8}
    assert (s["train_samples"], s["eval_samples"]) == (len(train) - (8 - plain_held), len(held) - plain_held)
    assert s["records_used"] == 12 and s["records_in"] == 20
