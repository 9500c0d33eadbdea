"""The `reweigh` command itself: it starts without loading the training stack, and user errors are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reweigh.cli.main import main

HEAVY = ('torch', 'composer', 'streaming', 'transformers', 'duckdb', 'matplotlib', 'pyarrow', 'numpy', 'starlette', 'uvicorn',
         'plotly')


def test_parsing_arguments_imports_nothing_heavy():
    """`reweigh --help`, `reweigh COMMAND --help` and argument errors answer before any heavy import."""
    commands = ('train', 'sweep', 'analyze', 'compare', 'curate', 'explore', 'prepare', 'weights')
    code = ('import sys\nfrom reweigh.cli.main import build_parser\nparser = build_parser()\n'
            f"for argv in ([c, '--help'] for c in {commands!r}):\n"
            '    try:\n        parser.parse_args(argv)\n    except SystemExit:\n        pass\n'
            f'print(sorted(m for m in {HEAVY!r} if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip().splitlines()[-1] == '[]'


def _one_line(err: str) -> str:
    assert 'Traceback' not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_weights_subcommand_prints_the_weights(capsys):
    assert main(['weights', '1', '1']) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ['1\t0.500000', '1\t0.500000']
    assert main(['weights', '1', '2', '--strategy', 'fancy']) == 2
    assert "'fancy'" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize('case', ['missing-path', 'empty-history', 'broken-summary', 'missing-dataset', 'bad-uri',
                                  'unreachable-store'])
def test_analyze_user_errors_are_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    from test_analysis import synthetic_history

    target = tmp_path / 'run'
    if case == 'empty-history':
        (target / 'history').mkdir(parents=True)
    elif case == 'broken-summary':
        target.mkdir()
        (target / 'summary.json').write_text('{not json')
    elif case == 'missing-dataset':
        synthetic_history(target / 'history')
        (target / 'summary.json').write_text(f'{{"history": "{target / "history"}", "dataset": "{tmp_path / "gone"}"}}')
    elif case == 'unreachable-store':  # nothing listens on port 9; the credentials are dummies
        for key, value in {'S3_ENDPOINT_URL': 'http://127.0.0.1:9', 'AWS_ACCESS_KEY_ID': 'x',
                           'AWS_SECRET_ACCESS_KEY': 'y', 'AWS_DEFAULT_REGION': 'us-east-1'}.items():
            monkeypatch.setenv(key, value)
    target = {'missing-path': tmp_path / 'nonexistent', 'bad-uri': 'ftp://host/run',
              'unreachable-store': 's3://bucket/run'}.get(case, target)
    assert main(['analyze', str(target), '--out', str(tmp_path / 'out')]) == 2
    line = _one_line(capsys.readouterr().err)
    expected = {'missing-path': 'does not exist', 'empty-history': 'no loss-history part files',
                'broken-summary': 'summary.json cannot be read', 'missing-dataset': 'holds no prepared dataset',
                'bad-uri': 'ftp://host/run', 'unreachable-store': 'cannot read the history at s3://bucket/run'}[case]
    assert line.startswith('reweigh analyze: error:') and expected in line


BLOCKED = ('composer', 'streaming', 'omegaconf', 'llmfoundry')
"""What an install without reweigh[composer] lacks (transformers and datasets may come with the hf extra)."""


def test_without_the_composer_extra_its_commands_name_it_and_analysis_works(tmp_path):
    """With Composer, Streaming and OmegaConf unimportable (as after `pip install reweigh`), `train`, `prepare`,
    `curate` and `sweep` each say in one line which extra to install and exit 2, and `analyze` still reports."""
    from extras_support import blocking
    from test_analysis import synthetic_history

    synthetic_history(tmp_path / 'run' / 'history')
    code = blocking(BLOCKED, """
        from reweigh.cli.main import main
        sys.exit(main(sys.argv[1:]))
    """)
    commands = {'train': ['yamls/tiny-cpu.yaml'], 'prepare': ['--out', str(tmp_path / 'data')],
                'curate': [str(tmp_path / 'run')], 'sweep': ['yamls/tiny-cpu.yaml']}
    for command, args in commands.items():
        out = subprocess.run([sys.executable, '-c', code, command, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (command, out.stderr)
        assert _one_line(out.stderr).startswith(f'reweigh {command}: error: this command needs Composer, Streaming')
        assert out.stderr.rstrip().endswith("pip install 'reweigh[composer]'"), out.stderr
    assert not (tmp_path / 'data').exists()
    out = subprocess.run([sys.executable, '-c', code, 'analyze', str(tmp_path / 'run')], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / 'run' / 'analysis' / 'report.md').is_file()
