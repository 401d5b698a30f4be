"""Plot a Shrek (entropy-aware sampling) run: each generated token's logit entropy and varentropy, the
attention entropy, and the branch the sampler took, with the tokens along the x axis.

Needs matplotlib: ``pip install ".[plot]"``.

Run: python examples/shrek_plot.py ["your prompt"] [-n 48] [--seed 1] [-o shrek.png] [--model FILE.gguf]
"""

import argparse

try:
    import matplotlib
except ImportError:
    raise SystemExit('shrek_plot.py needs matplotlib: pip install ".[plot]" (or pip install matplotlib)')

matplotlib.use('Agg')            # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from gadget import ShrekGen  # noqa: E402
from gadget.shrek import BRANCHES  # noqa: E402

COLOURS = dict(argmax='tab:green', clarify='tab:purple', explore='tab:orange', lost='tab:red',
               adaptive='tab:blue')

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('prompt', nargs='?', default='Once upon a time, in a quiet village,')
parser.add_argument('-n', type=int, default=48, help='tokens to generate')
parser.add_argument('--seed', type=int, default=1)
parser.add_argument('--model', default=None, help='GGUF file (default: SmolLM2-135M-Instruct Q4_1)')
parser.add_argument('-o', '--output', default='shrek.png')
args = parser.parse_args()

with ShrekGen(args.model) as gen:
    text = gen.generate(args.prompt, max_gen=args.n, seed=args.seed)
    steps = gen.trace
    labels = [gen.detokenize([s.token], skip_special=False) for s in steps]
print(args.prompt + text)

x = range(len(steps))
fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(steps) * 0.28), 6), sharex=True,
                                  gridspec_kw=dict(height_ratios=[3, 1]))
top.plot(x, [s.metrics['entropy'] for s in steps], marker='o', label='entropy (bits)')
top.plot(x, [s.metrics['varentropy'] for s in steps], marker='s', label='varentropy')
top.plot(x, [s.metrics['attn_entropy'] for s in steps], linestyle='--', label='attention entropy')
for level in (0.1, 3.0, 5.0):                      # the thresholds the branches are chosen by
    top.axhline(level, color='grey', linewidth=0.5, linestyle=':')
top.set_ylabel('bits')
top.legend(loc='upper right')
top.set_title(f'Shrek sampling, seed {args.seed}: {args.prompt!r}')
bottom.bar(x, [1] * len(steps), color=[COLOURS[s.branch] for s in steps], width=0.9)
bottom.set_yticks([])
bottom.set_xticks(list(x))
bottom.set_xticklabels([repr(t)[1:-1] for t in labels], rotation=90, fontsize=7)
handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[b]) for b in BRANCHES]
bottom.legend(handles, BRANCHES, ncol=len(BRANCHES), loc='upper center', bbox_to_anchor=(0.5, 1.45),
              fontsize=8, frameon=False)
fig.tight_layout()
fig.savefig(args.output, dpi=120)
print(f'wrote {args.output}: {len(steps)} steps, branches '
      + ', '.join(f'{b} {sum(s.branch == b for s in steps)}' for b in BRANCHES))
