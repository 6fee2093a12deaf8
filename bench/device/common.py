"""What the device checks share: the sizes they run at, a LLaMA-architecture model folder
built from its config, GPU sampling, and timing that waits for the GPU."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

# LLaMA-architecture widths (TinyLlama-1.1B's: hidden 2048, MLP 5632, 32 heads, 4 KV
# heads) at fewer layers, SmolLM2's 49152-token vocabulary, tied embeddings, random
# weights. "deploy": 6 layers, 365M parameters (check a); "stream": 2 layers, 189M, of
# which the 88M outside the embedding travel in every OSFT message (check b). "smoke":
# the same code on a CPU in seconds.
WIDTHS = {
    "deploy": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=6,
                   num_attention_heads=32, num_key_value_heads=4),
    "stream": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=2,
                   num_attention_heads=32, num_key_value_heads=4),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
}


def llama_folder(folder: Path, widths: str, seed: int = 0) -> int:
    """A Hugging Face folder (config, safetensors weights, SmolLM2's tokenizer from the
    cache) of a LlamaForCausalLM at WIDTHS[widths] under `seed`; its parameter count.
    Scenarios name the folder as model.name, the way a researcher names a checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from clients.models.decoders import decoder_tokenizer

    tokenizer = decoder_tokenizer("tiny-llama")  # SmolLM2's BPE (the kit's cache there)
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         **WIDTHS[widths])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of `fn`, the GPU's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                ) -> dict[str, list[float]]:
    """Seconds of each run, `repeats` times, the order rotated every repeat so that a
    noisy machine slows them alike (one warm-up call each first)."""
    for fn in runs.values():
        fn()
    names, times = list(runs), {name: [] for name in runs}
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            times[name].append(seconds(runs[name], device))
    return times


def ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> dict:
    """Median and range of the per-repeat ratios (the two measured side by side)."""
    ratios = [a / b for a, b in zip(times[numerator], times[denominator], strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


class GpuSampler:
    """(utilisation %, memory MiB) of GPU 0 from nvidia-smi every 0.5 s, in a thread;
    nothing where there is no nvidia-smi (the CPU smoke)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits", "-i", "0"],
                                     capture_output=True, text=True, timeout=5).stdout
                util, mem = (float(x) for x in out.strip().split(","))
                self.samples.append((util, mem))
            except (OSError, ValueError, subprocess.SubprocessError):
                return  # no GPU to sample
            self._stop.wait(0.5)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {"samples": 0}
        utils = [u for u, _ in self.samples]
        return {"samples": len(utils), "mean_util_pct": statistics.mean(utils),
                "busy_share": sum(u > 0 for u in utils) / len(utils),
                "peak_mem_mib": max(m for _, m in self.samples)}
