import json, os, re, shutil, subprocess, sys

root = sys.argv[1]
os.makedirs(root, exist_ok=True)
shell = ["/bin/sh", "-c"]
lines = open("Dockerfile").read().replace("\\\n", " ").splitlines()
env = dict(os.environ)
cwd = root
in_builder = False
for line in lines:
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    word, _, rest = line.partition(" ")
    word = word.upper()
    if word == "FROM":
        in_builder = bool(re.search(r"\bAS\s+builder\b", rest, re.I))
        continue
    if not in_builder:
        continue
    if word == "ARG":
        name, _, default = rest.partition("=")
        env[name] = env.get(name, default)
    elif word == "WORKDIR":
        cwd = os.path.join(root, rest.lstrip("/"))
        os.makedirs(cwd, exist_ok=True)
    elif word == "COPY":
        *sources, dest = rest.split()
        dest = os.path.join(cwd, dest) if not dest.startswith("/") else os.path.join(root, dest.lstrip("/"))
        for source in sources:
            target = os.path.join(dest, os.path.basename(source.rstrip("/"))) if dest.endswith("/") else dest
            if os.path.isdir(source):
                shutil.copytree(source, target, dirs_exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
                shutil.copy2(source, target)
    elif word == "SHELL":
        shell = json.loads(rest)
    elif word == "RUN":
        print("+ RUN", rest[:100] + ("..." if len(rest) > 100 else ""), flush=True)
        subprocess.run(shell + [rest], cwd=cwd, env=env, check=True)
    else:
        sys.exit(f"unsupported instruction in the builder stage: {word}")
binary = os.path.join(root, "build", "tokenrelay")
out = subprocess.run(["file", binary], capture_output=True, text=True).stdout if shutil.which("file") else ""
print("built", binary, os.path.getsize(binary), "bytes", out.split(":", 1)[-1].strip())
