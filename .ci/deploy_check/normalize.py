import re, sys
docs = re.split(r"(?m)^---\n", sys.stdin.read())
out = []
for doc in docs:
    if re.search(r"(?m)^kind: Secret$", doc):
        doc = re.sub(r"(?m)^(data:\n)((?:  .*\n)+)",
                     lambda m: m.group(1) + re.sub(r"(?m)^(  [^:]+: ).*$", "\\1\"<random>\"", m.group(2)),
                     doc)
    out.append(doc)
sys.stdout.write("---\n".join(out))
