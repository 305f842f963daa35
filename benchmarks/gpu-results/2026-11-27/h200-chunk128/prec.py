import copy, sys, time
import torch
sys.path.insert(0, ".")
from pbu.fisher import fisher_diagonal
from pbu.models import build_model
torch.manual_seed(0)
m = build_model("resnet18", num_classes=10, in_channels=3, image_size=32).cuda().eval()
x = torch.randn(128, 3, 32, 32, device="cuda"); y = torch.zeros(128, dtype=torch.long, device="cuda")
m64 = copy.deepcopy(m).double()
ref = fisher_diagonal(m64, [(x.double(), y)], "true", chunk_size=128)
def rel(a):
    return max(((a[k].double() - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)
for cl in (False, True):
    mm = copy.deepcopy(m); xx = x
    if cl:
        mm = mm.to(memory_format=torch.channels_last); xx = x.contiguous(memory_format=torch.channels_last)
    for label, setup in (("cudnn", lambda: None),
                         ("cudnn_det", lambda: setattr(torch.backends.cudnn, "deterministic", True)),
                         ("no_cudnn", lambda: setattr(torch.backends.cudnn, "enabled", False))):
        torch.backends.cudnn.deterministic = False; torch.backends.cudnn.enabled = True
        setup()
        f = fisher_diagonal(mm, [(xx, y)], "true", chunk_size=128)
        torch.cuda.synchronize(); t = time.perf_counter()
        f = fisher_diagonal(mm, [(xx, y)], "true", chunk_size=128)
        torch.cuda.synchronize(); dt = time.perf_counter() - t
        print(f"channels_last={cl} {label:10s} rel per tensor vs fp64 {rel(f):.2e}  {dt:.3f}s", flush=True)
torch.backends.cudnn.deterministic = False; torch.backends.cudnn.enabled = True
