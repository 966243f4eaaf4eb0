"""`python -m sicog.curate.embed_file` from a checkout in NV-Embed-v2's environment (docs/curation.md).

That environment has numpy, sentence-transformers 2.7 and transformers 4.42, and neither SICOG's other
dependencies (``wrapt`` among them) nor transformers 5. It is stood in for by a ``sitecustomize`` that
hides every installed package but numpy, torch and what transformers requires, and by stand-ins for
transformers 4.42 and sentence-transformers that import transformers' ``configuration_auto`` as the real ones
do (the module SICOG's registration hooks wait for).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _torch_modules() -> set[str]:
    """Top-level modules of torch and of every distribution it requires (the environment has torch)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, requires

    from packaging.requirements import Requirement

    wanted, queue = set(), ["torch"]
    while queue:
        name = queue.pop().lower().replace("_", "-")
        if name in wanted:
            continue
        wanted.add(name)
        try:
            queue += [Requirement(r).name for r in requires(name) or [] if "extra ==" not in r]
        except PackageNotFoundError:
            pass
    return {module for module, dists in packages_distributions().items()
            if any(d.lower().replace("_", "-") in wanted for d in dists)}


TORCH_MODULES = sorted(_torch_modules())

SITECUSTOMIZE = '''
"""Hide every installed package that the embedding environment lacks."""
import importlib.abc
import sys

# packaging, regex and tqdm: requirements of transformers and sentence-transformers.
ALLOWED = {{"numpy", "packaging", "regex", "tqdm", "sicog", "transformers", "sentence_transformers", *{extra!r}}}


class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in ALLOWED or top.startswith("_"):
            return None
        raise ModuleNotFoundError(f"No module named {{top!r}}", name=top)


sys.meta_path.insert(0, Hide())
'''

FILES = {
    "transformers/__init__.py": '__version__ = "4.42.4"\n',
    "transformers/models/__init__.py": "",
    "transformers/models/auto/__init__.py": "",
    "transformers/models/auto/configuration_auto.py": "class AutoConfig:\n    pass\n",
    # The calls embed.py makes, as sentence-transformers 2.7 takes them: no model_kwargs (a dtype is set
    # by casting the loaded model), the dimension method under its 2.7 name, and encode returning the
    # model's dtype, which 2.7 cannot turn into numpy itself when it is bfloat16.
    "sentence_transformers/__init__.py": textwrap.dedent('''
        import torch
        from transformers.models.auto.configuration_auto import AutoConfig  # as the real package does

        class SentenceTransformer:
            def __init__(self, name, device=None, trust_remote_code=False):
                self.max_seq_length = 128
                self.tokenizer = None
                self.dtype = torch.float32

            def to(self, dtype):
                self.dtype = dtype
                return self

            def get_sentence_embedding_dimension(self):
                return 3

            def encode(self, texts, prompt=None, batch_size=32, convert_to_numpy=True, convert_to_tensor=False,
                       normalize_embeddings=False, show_progress_bar=False):
                vectors = torch.tensor([[len(t), t.count("a"), 1.0] for t in texts], dtype=self.dtype)
                if convert_to_tensor:
                    return vectors
                return vectors.numpy()  # raises for bfloat16, as 2.7 does
        '''),
}


@pytest.mark.parametrize(("extra", "dtype"), [((), "float32"), (("wrapt",), "bfloat16")],
                         ids=["no-wrapt", "wrapt-bf16"])
def test_embed_file_runs_in_the_encoders_environment(tmp_path: Path, extra: tuple[str, ...], dtype: str) -> None:
    stubs = tmp_path / "env"
    for name, text in {**FILES, "sitecustomize.py": SITECUSTOMIZE.format(extra=(*extra, *TORCH_MODULES))}.items():
        (stubs / name).parent.mkdir(parents=True, exist_ok=True)
        (stubs / name).write_text(text)
    texts = ["a cat", "", "a banana", "\u200b"]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stubs), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-m", "sicog.curate.embed_file", "--texts", str(tmp_path / "texts.jsonl"),
         "--output", str(tmp_path / "emb.npy"), "--encoder", "stand-in", "--device", "cpu", "--dtype", dtype],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    vectors = np.load(tmp_path / "emb.npy")
    # The empty text and the zero-width space (blank) embed as zero rows.
    assert vectors.shape == (4, 3) and vectors[[0, 2]].any(axis=1).all() and not vectors[[1, 3]].any()
    assert json.loads((tmp_path / "emb.npy.json").read_text())["texts"] == 4
