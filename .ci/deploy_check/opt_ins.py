import os, re, sys

out, paths = sys.argv[1], sys.argv[2:]
status = written = 0
for path in paths:
    text = open(path).read()
    if "[opt-in:" not in text:
        continue
    result, block, indent, names = [], None, "", set()
    for number, line in enumerate(text.split("\n"), 1):
        start = re.fullmatch(r"(\s*)# \[opt-in: ([\w-]+)\]\s*", line)
        end = re.fullmatch(r"\s*# \[end: ([\w-]+)\]\s*", line)
        if start:
            if block:
                print(f"{path}:{number}: [opt-in: {start.group(2)}] inside [opt-in: {block}]")
                status = 1
            indent, block = start.group(1), start.group(2)
            names.add(block)
        elif end:
            if end.group(1) != block:
                print(f"{path}:{number}: [end: {end.group(1)}] does not close [opt-in: {block}]")
                status = 1
            block = None
        elif block:
            commented = re.fullmatch(re.escape(indent) + r"# ?(.*)", line)
            if not commented:
                print(f"{path}:{number}: inside [opt-in: {block}] every line must be '# ' at the marker's indentation")
                status = 1
                continue
            line = indent + commented.group(1)
        result.append(line)
    if block:
        print(f"{path}: [opt-in: {block}] is never closed")
        status = 1
    target = os.path.join(out, "deploy-optin-" + os.path.basename(path))
    with open(target, "w") as f:
        f.write("\n".join(result))
    written += 1
    print(f"{path}: opt-in {', '.join(sorted(names))} uncommented -> {os.path.basename(target)}")
if not written:
    print("no [opt-in: ...] blocks found in deploy/")
    status = 1
sys.exit(status)
