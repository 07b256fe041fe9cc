import hashlib, re, sys
docs = re.split(r"(?m)^---\n", sys.stdin.read())
values = set()
for doc in docs:
    if re.search(r"(?m)^kind: Secret$", doc):
        data = re.search(r"(?m)^data:\n((?:  .*\n)+)", doc)
        for value in re.findall(r"(?m)^  [^:]+: \"?([^\"\n]*)\"?$", data.group(1) if data else ""):
            values.add(hashlib.sha256(value.encode()).hexdigest())
out, status = [], 0
for doc in docs:
    for checksum in re.findall(r"(?m)^ +checksum/identity-header: (\S+)$", doc):
        if checksum not in values:
            print(f"checksum/identity-header {checksum} is the sha256 of no Secret value in this output",
                  file=sys.stderr)
            status = 1
    doc = re.sub(r"(?m)^( +checksum/identity-header: )\S+$", "\\1\"<sha256 of the Secret value>\"", doc)
    if re.search(r"(?m)^kind: Secret$", doc):
        doc = re.sub(r"(?m)^(data:\n)((?:  .*\n)+)",
                     lambda m: m.group(1) + re.sub(r"(?m)^(  [^:]+: ).*$", "\\1\"<random>\"", m.group(2)),
                     doc)
    out.append(doc)
sys.stdout.write("---\n".join(out))
sys.exit(status)
