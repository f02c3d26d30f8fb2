"""The new stage kinds in pipelines: seeds -> evolve with constraints -> pairs -> DPO (the shipped
`preference_corpus` chain, through the loopback server and a tiny model), and a seedless pipeline
magpie -> converse -> filter that needs no input file."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dataforge.cli import app
from dataforge.generate.evolve_step import derive_seed
from dataforge.io import read_records
from dataforge.pipeline.spec import find_pipeline, load_pipeline
from dataforge.testing import LoopbackServer
from dataforge.testing.loopback import last_user_message
from pipeline_helpers import small_seeds

runner = CliRunner()
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QUERIES = ["How do tides work on a planet with two moons?", "What makes sourdough bread rise without yeast packets?",
           "Explain why the sky looks red at sunset.", "How should I start learning to play the cello?"]
SEED_OF = {derive_seed(2, "query", g): g for g in range(50)}
FOLLOW_UPS = ["Could you give me one concrete example of that?", "Why does that happen, in simple terms?"]


def model(body: dict) -> str:
    """Every request of these pipelines: magpie queries, follow-ups, answers (worse when sampled hot)."""
    if "prompt" in body:
        return QUERIES[SEED_OF[body["seed"]] % len(QUERIES)] + "<|im_end|>"
    text = last_user_message(body)
    if "Write the user's next message" in text:
        return FOLLOW_UPS[text.count("User:") - 1]
    if body.get("temperature", 0) >= 1.0:
        return "I'm sorry, but I cannot help with that."
    return f"Here is a careful answer about {text[:50].strip()}, with the main points and one example."


def _tiny_model(tmp_path):
    from dataforge.train.tiny import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer(chat_template=True)
    path = tmp_path / "tiny"
    tiny_llama(len(tok), seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_preference_corpus_chain_through_the_loopback_server_and_a_tiny_model(tmp_path):
    """The shipped pipeline file itself, with only its size and model made small."""
    import yaml

    spec = yaml.safe_load(find_pipeline("preference_corpus").read_text(encoding="utf-8"))
    assert [s["stage"] for s in spec["stages"]] == ["evolve", "pairs", "train"]
    assert spec["stages"][2]["objective"] == "dpo" and load_pipeline(find_pipeline("preference_corpus"))
    seeds, tiny = small_seeds(tmp_path, 6), _tiny_model(tmp_path)
    spec.update(input=str(seeds), run_dir=str(tmp_path / "run"))
    spec["stages"][0]["rounds"] = 1
    spec["stages"][2].update(model=str(tiny), max_steps=2, batch_size=2, eval_fraction=0)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    with LoopbackServer(responder=model) as srv:
        res = runner.invoke(app, ["run", str(job), "--base-url", srv.base_url, "--model", "m", "--cache",
                                  str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    pairs = list(read_records(tmp_path / "run" / "pairs" / "pairs.jsonl"))  # Records inside a pipeline
    assert len(pairs) == 6 and all(p.preference is not None and p.lineage.generator == "pairs" for p in pairs)
    assert all(p.preference.rejected.startswith("I'm sorry") for p in pairs)
    assert {p.preference.rejected_temperature for p in pairs} <= {1.0, 1.4}  # the shipped spread, sampled hot
    assert {p.preference.chosen_temperature for p in pairs} <= {None, 0.2, 0.6}  # None: evolve's own answer
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    train = manifest["stages"]["train"]["summary"]["details"]
    assert train["objective"] == "dpo" and train["steps"] == 2 and train["train_samples"] == 6


def test_a_seedless_pipeline_magpie_then_converse_then_filter(tmp_path):
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    job = tmp_path / "job.yaml"
    job.write_text(f"""name: seedless
run_dir: {tmp_path / 'run'}
seed: 2
stages:
  - stage: magpie
    num: 3
    chat_template: {template}
  - stage: converse
    turns: 2
    styles: [clarify]
  - stage: filter
    no_llm: true
    single_file: true
""")
    with LoopbackServer(responder=model) as srv:
        res = runner.invoke(app, ["run", str(job), "--base-url", srv.base_url, "--model", "m", "--cache",
                                  str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    gated = list(read_records(tmp_path / "run" / "filter" / "records.jsonl"))
    assert len(gated) == 3 and all(r.assistant_turns == 2 and r.turns[1].scores for r in gated)
    assert {r.instruction for r in gated} <= set(QUERIES)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["magpie"]["counts"]["in"] == 0 and manifest["stages"]["magpie"]["counts"]["out"] == 3
