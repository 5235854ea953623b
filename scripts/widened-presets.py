"""Writes the widened tile presets of the CPU diagnoses into the current folder: `ideal` with
the ADC at 16 bits (ideal-adc16.toml), with both converters at 16 bits (ideal-both16.toml), and
`afm-paper` with the ADC at 16 bits (afm-paper-adc16.toml).
Usage: python3 scripts/widened-presets.py TILES_DIR"""
import re
import sys


def widen(base, convs, name):
    s = open(f"{sys.argv[1]}/{base}.toml").read()
    for conv in convs:
        t = re.sub(r"(\[" + conv + r"\]\n(?:#[^\n]*\n)*bits = )8", r"\g<1>16", s, count=1)
        assert t != s, conv
        s = t
    open(f"{name}.toml", "w").write(s.replace(f'name = "{base}"', f'name = "{name}"'))


widen("ideal", ["adc"], "ideal-adc16")
widen("ideal", ["adc", "dac"], "ideal-both16")
widen("afm-paper", ["adc"], "afm-paper-adc16")
