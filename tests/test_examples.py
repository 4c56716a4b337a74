"""The README's custom-regularizer example runs, passes its derivative checks and learns."""
import importlib.util
from pathlib import Path


def test_custom_regularizer_example():
    path = Path(__file__).resolve().parents[1] / "scripts" / "example_custom_regularizer.py"
    spec = importlib.util.spec_from_file_location("example_custom_regularizer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    results = mod.main([])
    for name, (psnr_noisy, psnr_learned, _theta) in results.items():
        assert psnr_learned > psnr_noisy + 3.0, name
