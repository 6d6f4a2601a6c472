#!/usr/bin/env python3
# orchestrator/embed.py IN OUT SYMBOL: writes a C file that defines
# `const char SYMBOL[]` holding IN's bytes, so a document (openapi.json) ships
# inside the binary instead of beside it. Run by meson at build time.
import sys

src, dst, sym = sys.argv[1:4]
data = open(src, "rb").read()
with open(dst, "w") as out:
    out.write("/* generated from %s by embed.py; do not edit */\n#include <stddef.h>\n" % src.split("/")[-1])
    out.write("const char %s[] = {\n" % sym)
    for i in range(0, len(data), 16):
        out.write("    " + ", ".join("0x%02x" % b for b in data[i:i + 16]) + ",\n")
    out.write("    0x00};\nconst size_t %s_len = %d;\n" % (sym, len(data)))
