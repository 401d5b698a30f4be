"""The ``gadget`` command (``python -m gadget``)."""

from __future__ import annotations

import argparse
import sys


def _info(_args: argparse.Namespace) -> int:
    from . import __version__
    from .ggml import API, ffi, lib

    features = [name[len('ggml_cpu_has_'):] for name in sorted(API['functions'])
                if name.startswith('ggml_cpu_has_') and getattr(lib, name)()]
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        devices.append(f"{ffi.string(lib.ggml_backend_dev_name(dev)).decode()} "
                       f"({ffi.string(lib.ggml_backend_dev_description(dev)).decode()})")
    print(f'gadget {__version__}, GGML {ffi.string(lib.ggml_version()).decode()} '
          f'({ffi.string(lib.ggml_commit()).decode()})')
    print(f"bound functions: {len(API['functions'])}, guarded against aborts: "
          f"{sum(f['guarded'] for f in API['functions'].values())}")
    print('devices: ' + ', '.join(devices))
    print('CPU features: ' + ' '.join(features))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='gadget', description='Build and run GGML models.')
    commands = parser.add_subparsers(dest='command', required=True)
    commands.add_parser('info', help='versions, devices and CPU features of this build').set_defaults(run=_info)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(main())
