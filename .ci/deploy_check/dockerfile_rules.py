import re, sys

text = open("Dockerfile").read().replace("\\\n", " ")
stages = re.split(r"(?im)^FROM\s+", text)[1:]
builder = next((s for s in stages if re.match(r"\S+\s+AS\s+builder\b", s, re.I)), "")
runtime = stages[-1] if stages else ""
problems = []
if not builder:
    problems.append("no build stage named builder")
# Both architectures: buildx sets TARGETARCH per --platform; the build maps it to a musl triple.
if not re.search(r"(?m)^ARG\s+TARGETARCH\s*$", builder):
    problems.append("the builder does not declare ARG TARGETARCH (set by buildx per --platform)")
for arch, triple in (("amd64", "x86_64-unknown-linux-musl"), ("arm64", "aarch64-unknown-linux-musl")):
    if not re.search(rf"\b{arch}\)\s*target={triple}\b", builder):
        problems.append(f"the builder does not map TARGETARCH {arch} to {triple}")
if re.search(r"(?im)^FROM\s+--platform=", open("Dockerfile").read()):
    problems.append("a FROM pins --platform: buildx must build each stage for the requested platform")
if "--no-default-features" not in builder:
    problems.append("the image must build with --no-default-features (no keyring: seccomp blocks keyutils)")
# A static binary, asserted before the runtime stage copies it.
static_check = re.search(r"readelf[^\n]*--program-headers[^\n]*--dynamic", builder)
if not static_check or not re.search(r"grep -E 'program interpreter\|\\\(NEEDED\\\)'", builder):
    problems.append("the builder does not assert that tokenrelay is statically linked (readelf: no program "
                    "interpreter, no NEEDED libraries)")
if not re.search(r"(?m)^COPY --from=builder /build/tokenrelay ", runtime):
    problems.append("the runtime stage does not copy the checked binary from the builder")
# OCI labels from build arguments.
for label, arg in (("source", "SOURCE"), ("version", "VERSION"), ("revision", "REVISION"), ("created", "CREATED")):
    if not re.search(rf"(?m)^ARG\s+{arg}\b", runtime):
        problems.append(f"the runtime stage does not declare ARG {arg}")
    if not re.search(rf'org\.opencontainers\.image\.{label}="\$\{{{arg}\}}"', runtime):
        problems.append(f"no label org.opencontainers.image.{label}=\"${{{arg}}}\"")
for problem in problems:
    print("PROBLEM: Dockerfile:", problem)
if not problems:
    print("Dockerfile: amd64 and arm64 (TARGETARCH), static binary asserted, OCI labels from build arguments")
sys.exit(1 if problems else 0)
