"""The pinned closure of whichmodel's runtime requirements and Ray's (data, tune), as installed
here, minus torch, torchvision, triton and the nvidia-* CUDA libraries: the wheels
benchmarks/gpu_e2e.sh packs for a GPU machine that keeps its own CUDA torch. Prints one
``name==version`` a line."""

import re
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement

skip = re.compile(r"^(torch|torchvision|triton|nvidia-.*|whichmodel)$")
todo = [Requirement(r) for r in distribution("whichmodel").requires or [] if "extra" not in r]
todo.append(Requirement("ray[data,tune]"))
seen: dict[str, tuple[str, set]] = {}
while todo:
    req = todo.pop()
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    if skip.match(name):
        continue
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        continue
    extras = set(req.extras) | seen.get(name, (None, set()))[1]
    if name in seen and extras <= seen[name][1]:
        continue
    seen[name] = (dist.version, extras)
    for text in dist.requires or []:
        r = Requirement(text)
        env = [{"extra": e} for e in extras] or [{"extra": ""}]
        if r.marker is None or any(r.marker.evaluate(e) for e in env):
            todo.append(r)
for name, (version, _) in sorted(seen.items()):
    print(f"{name}=={version}")
