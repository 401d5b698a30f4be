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


def _inspect(args: argparse.Namespace) -> int:
    from .errors import GgufError
    from .gguf import GgufFile

    try:
        with GgufFile.from_path(args.file) as gguf:
            print(gguf.describe(max_items=args.items))
    except (GgufError, OSError) as exc:
        print(f'gadget inspect: {exc}', file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='gadget', description='Build and run GGML models.')
    commands = parser.add_subparsers(dest='command', required=True)
    commands.add_parser('info', help='versions, devices and CPU features of this build').set_defaults(run=_info)
    inspect = commands.add_parser('inspect', help='print the fields and tensor table of a GGUF file')
    inspect.add_argument('file', help='path of a .gguf file')
    inspect.add_argument('--items', type=int, default=8, help='array items shown before abbreviating')
    inspect.set_defaults(run=_inspect)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(main())
