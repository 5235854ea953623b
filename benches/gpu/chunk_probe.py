# Probe: does a token-chunked forward (block product into a reused L2-sized buffer, then the
# block sum) beat the whole-plane product + sum? torch stand-ins for our GEMM + adc_sum.
import torch
from gpu_timing import median_ms as timeit
dev = "cuda"
print(torch.cuda.get_device_name())
for d, T in [(2048, 4096), (4096, 4096), (2048, 16384), (4096, 16384), (8192, 4096)]:
    nb, r = d // 512, 512
    wbt = torch.randn(nb, r, d, device=dev, dtype=torch.bfloat16)
    y = torch.empty(T, d, device=dev, dtype=torch.bfloat16)
    xb = torch.randn(nb, T, r, device=dev, dtype=torch.bfloat16)
    yb = torch.empty(nb, T, d, device=dev, dtype=torch.bfloat16)
    row = [f"{d}x{T}", f"bmm {timeit(lambda: torch.bmm(xb, wbt, out=yb)):.3f}",
           f"sum {timeit(lambda: torch.sum(yb, 0, out=y)):.3f}"]
    for mb in (16, 32):
        tc = min(T, max(64, (mb << 20) // (nb * d * 2) // 64 * 64))
        n = T // tc
        xc = torch.randn(n, nb, tc, r, device=dev, dtype=torch.bfloat16)
        buf = torch.empty(nb, tc, d, device=dev, dtype=torch.bfloat16)
        def cb():
            for i in range(n): torch.bmm(xc[i], wbt, out=buf)
        def cs():
            for i in range(n): torch.sum(buf, 0, out=y[i * tc:(i + 1) * tc])
        def both():
            for i in range(n):
                torch.bmm(xc[i], wbt, out=buf)
                torch.sum(buf, 0, out=y[i * tc:(i + 1) * tc])
        row.append(f"tc={tc}: bmm {timeit(cb):.3f} sum {timeit(cs):.3f} both {timeit(both):.3f}")
    print("  ".join(row), flush=True)
