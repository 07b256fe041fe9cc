import subprocess, sys
import yaml

seen, status = set(), 0
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        template = ((doc or {}).get("spec") or {}).get("template") or {}
        spec = template.get("spec") or {}
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            command = container.get("command") or []
            if command[:2] != ["sh", "-c"] or len(command) < 3 or command[2] in seen:
                continue
            seen.add(command[2])
            run = subprocess.run(["shellcheck", "-s", "sh", "-"], input=command[2], text=True,
                                 capture_output=True)
            if run.returncode:
                status = 1
                print(f"{path}: container {container['name']}:\n{run.stdout}")
print(f"{len(seen)} embedded scripts checked")
sys.exit(status)
