"""Watch `reweigh train` ride out an object-store outage: a remote save_folder on a loopback S3 emulator
that is stopped in the middle of the run and started again.

    .venv/bin/python scripts/outage_demo.py [--outage-s 8] [--steps 40]

Prints when the first checkpoint reached the bucket, when the store went down and came back, the run's
exit code and wall time, its warnings, and what the bucket holds at the end (every checkpoint, the
``latest`` pointer, and every step of the loss history exactly once). Needs the test extras (moto).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--outage-s', type=float, default=8.0, help='how long the store stays down')
    parser.add_argument('--steps', type=int, default=40, help='training steps (a checkpoint every 4)')
    args = parser.parse_args()

    import boto3
    import pyarrow.parquet as pq
    from moto.server import ThreadedMotoServer

    from reweigh.pipeline import prepare_default_corpus

    sys.path.insert(0, str(ROOT / 'tests'))  # the S3 emulator is a test helper, not shipped
    from s3_emulator import emulator_env, free_port

    work = Path(tempfile.mkdtemp(prefix='reweigh-outage-'))
    data = work / 'data'
    prepare_default_corpus(data, max_bytes_per_domain=40_000, vocab_size=512, seq_len=64, progress=False)
    port = free_port()
    url = f'http://127.0.0.1:{port}'
    logging.getLogger('werkzeug').setLevel(logging.ERROR)  # no request log
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
    server.start()
    client = boto3.client('s3', endpoint_url=url, aws_access_key_id='testing', aws_secret_access_key='testing',
                          region_name='us-east-1')
    client.create_bucket(Bucket='reweigh')

    def keys() -> list[str]:
        return sorted(o['Key'] for o in client.list_objects_v2(Bucket='reweigh', Prefix='runs/outage/').get('Contents', []))

    overrides = [
        'run_name=outage', f'run_dir={work / "run"}', 'save_folder=s3://reweigh/runs/{run_name}/checkpoints',
        f'train_loader.dataset.local={data}', 'train_loader.dataset.prepare_default=false',
        f'eval_loader.dataset.local={data}', 'model.config={n_layer: 2, n_embd: 64, n_head: 2, n_positions: 64}',
        'loggers={}', 'callbacks={}', 'progress_bar=false', f'max_duration={args.steps}ba',
        f'eval_interval={args.steps}ba', 'save_interval=4ba', 'history.flush_interval=4ba',
        'save_num_checkpoints_to_keep=-1', 'algorithms.loss_reweighting.warmup=4ba',
    ]
    env = {**os.environ, **emulator_env(url)}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, '-m', 'reweigh.cli.train', str(ROOT / 'yamls' / 'tiny-cpu.yaml'),
                             *overrides], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not any(k.endswith('.pt') for k in keys()):
        if proc.poll() is not None:
            print(proc.stderr.read(), file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(f'{time.monotonic() - start:6.1f} s  first checkpoint in the bucket')
    server.stop()
    print(f'{time.monotonic() - start:6.1f} s  store down')
    time.sleep(args.outage_s)
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
    server.start()
    print(f'{time.monotonic() - start:6.1f} s  store back')
    err = proc.communicate()[1]
    print(f'{time.monotonic() - start:6.1f} s  run ended with exit code {proc.returncode}')
    for line in err.splitlines():
        if 'warning:' in line or 'error:' in line:
            print('   ', line)
    final = keys()
    steps: list[int] = []
    for key in (k for k in final if '/history/' in k):
        local = work / key.replace('/', '_')
        client.download_file('reweigh', key, str(local))
        steps += pq.read_table(local)['step'].to_pylist()
    print(f'bucket: {sum(k.endswith(".pt") for k in final)} checkpoints, '
          f'{sum("/history/" in k for k in final)} history parts, pointer -> '
          f'{client.get_object(Bucket="reweigh", Key="runs/outage/checkpoints/latest-rank0.pt.symlink")["Body"].read().decode()}')
    print(f'history: {len(steps)} rows, steps {min(steps)}..{max(steps)}, each step '
          f'{"exactly once" if sorted(set(steps)) == list(range(args.steps)) and len(steps) == 8 * args.steps else "NOT once"}')
    server.stop()
    return proc.returncode


if __name__ == '__main__':
    sys.exit(main())
