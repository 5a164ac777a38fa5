"""The Colab notebooks are clean and run headless (tiny model, local data, offline)."""

import os

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = {name: os.path.join(ROOT, 'colab', name)
             for name in ('inference_attention.ipynb', 'finetune.ipynb', 'lit.ipynb')}


@pytest.mark.parametrize('name', sorted(NOTEBOOKS))
def test_notebook_is_clean_and_starts_with_the_install_cell(name):
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert all(c.outputs == [] and c.execution_count is None for c in code), f'{name} has stored outputs'
    assert nb.cells[0].cell_type == 'code' and 'pip' in nb.cells[0].source
    assert "find_spec('vit_jax') is None" in nb.cells[0].source     # skipped when already installed


def _execute(name, tmp_path, monkeypatch):
    from nbclient import NotebookClient
    monkeypatch.setenv('VIT_JAX_NOTEBOOK_SMOKE', '1')
    monkeypatch.setenv('VIT_JAX_REPO_DIR', ROOT)
    monkeypatch.setenv('VIT_JAX_WORKDIR', str(tmp_path / 'workdir'))
    monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    NotebookClient(nb, timeout=600, kernel_name='python3',
                   resources={'metadata': {'path': str(tmp_path)}}).execute()
    return '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.outputs)


@pytest.mark.slow
def test_inference_notebook_executes(tmp_path, monkeypatch):
    text = _execute('inference_attention.ipynb', tmp_path, monkeypatch)
    assert 'attention: (1, 1, 2, 17, 17)' in text                  # 1 layer, 2 heads, 1 + 4x4 tokens
    for figure in ('attention_rollout', 'mean_attention_distance', 'embedding_filters'):
        assert f'{figure}.png' in text


@pytest.mark.slow
def test_finetune_notebook_executes(tmp_path, monkeypatch):
    text = _execute('finetune.ipynb', tmp_path, monkeypatch)
    assert 'model.npz' in text
    assert '-> red' in text and '-> blue' in text


@pytest.mark.slow
def test_lit_notebook_executes(tmp_path, monkeypatch):
    text = _execute('lit.ipynb', tmp_path, monkeypatch)
    assert 'text_transformer text tower, 16 px, 8 tokens' in text
    assert 'images (3, 16, 16, 3) tokens (5, 8) zimg (3, 8) ztxt (5, 8)' in text
    assert 'image 2:' in text and 'zero-shot accuracy:' in text and 'of 3 images (3 classes)' in text
