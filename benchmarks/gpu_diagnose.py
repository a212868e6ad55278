"""GPU diagnosis, as run on the H100 on 2026-11-27 (docs/BENCHMARKS.md, "GPU profile"):
which ingredient of a training step fails under bf16 (each case in a fresh process, with
CUDA_LAUNCH_BLOCKING=1), step times of optimized vs baseline with the hand-written or the
native depthwise backward, and a torch.profiler table of one step of each model.

    PYTHONPATH=src:SITE python3 benchmarks/gpu_diagnose.py    # SITE: nibabel + monai, see gpu_session.sh
"""
import os, subprocess, sys, time, json
import torch, torch.nn.functional as F

def native_depthwise():
    import xray2ct.models.depthwise as dw
    dw._DepthwiseConv3dFn.apply = staticmethod(lambda x, w: F.conv3d(x, w, padding=w.shape[-1] // 2, groups=x.shape[1]))

def step(cfg_name, batch, amp, full_loss, native, variant=None):
    from xray2ct.config import load_config
    from xray2ct.models import build_model
    from xray2ct.losses import ReconstructionLoss
    from xray2ct.quality import VARIANTS
    if native:
        native_depthwise()
    over = dict(VARIANTS[variant][1]) if variant else {}
    cfg = load_config(f"configs/{cfg_name}.json", overrides=over)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    m = build_model(cfg).to(dev).train()
    loss_fn = ReconstructionLoss.from_config(cfg).to(dev)
    s, n = cfg.model.xray_img_size, cfg.model.volume_size
    x = torch.rand(batch, 2, s, s, device=dev); ct = torch.rand(batch, 1, n, n, n, device=dev)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cuda", enabled=False)
    for _ in range(2):
        with ctx:
            out = m(x)
            loss = loss_fn(out, ct)[0] if full_loss else out["volume"].float().mean() + out["log_var"].float().mean()
        loss.backward()
    torch.cuda.synchronize()
    return "ok"

def timing(cfg_name, native, amp, batch, variant=None):
    from xray2ct.config import load_config
    from xray2ct.models import build_model
    from xray2ct.quality import VARIANTS
    if native:
        native_depthwise()
    cfg = load_config(f"configs/{cfg_name}.json", overrides=dict(VARIANTS[variant][1]) if variant else {})
    dev = torch.device("cuda"); torch.manual_seed(0)
    m = build_model(cfg).to(dev).train()
    s = cfg.model.xray_img_size
    x = torch.rand(batch, 2, s, s, device=dev)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cuda", enabled=False)
    def run():
        with ctx:
            out = m(x)
        (out["volume"].float().mean() + out["log_var"].float().mean()).backward()
    for _ in range(3): run()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): run()
    torch.cuda.synchronize()
    return f"{(time.perf_counter() - t) / 10 * 1e3:.1f} ms"

def profile(cfg_name, native):
    from torch.profiler import profile as prof, ProfilerActivity
    from xray2ct.config import load_config
    from xray2ct.models import build_model
    if native:
        native_depthwise()
    cfg = load_config(f"configs/{cfg_name}.json")
    dev = torch.device("cuda"); m = build_model(cfg).to(dev).train()
    x = torch.rand(1, 2, 512, 512, device=dev)
    def run():
        out = m(x); (out["volume"].mean() + out["log_var"].mean()).backward()
    for _ in range(3): run()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        run(); torch.cuda.synchronize()
    ev = p.key_averages()
    n_kernels = sum(e.count for e in ev if e.device_type.name == "CUDA")
    return f"kernels {n_kernels}\n" + ev.table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=50)

if __name__ == "__main__":
    if len(sys.argv) > 1:
        what, args = sys.argv[1], json.loads(sys.argv[2])
        print({"step": step, "timing": timing, "profile": profile}[what](**args))
        sys.exit(0)
    env = {**os.environ}
    cases = [
        ("step", dict(cfg_name="gpu-64", batch=4, amp=True, full_loss=True, native=False)),
        ("step", dict(cfg_name="gpu-64", batch=4, amp=True, full_loss=True, native=True)),
        ("step", dict(cfg_name="gpu-64", batch=4, amp=False, full_loss=True, native=False)),
        ("step", dict(cfg_name="gpu-64", batch=4, amp=True, full_loss=False, native=False)),
        ("step", dict(cfg_name="gpu-64", batch=1, amp=True, full_loss=True, native=False)),
        ("step", dict(cfg_name="gpu-64", batch=4, amp=True, full_loss=True, native=False, variant="baseline")),
        ("timing", dict(cfg_name="optimized", native=False, amp=False, batch=1)),
        ("timing", dict(cfg_name="optimized", native=True, amp=False, batch=1)),
        ("timing", dict(cfg_name="baseline", native=False, amp=False, batch=1)),
        ("timing", dict(cfg_name="optimized", native=True, amp=True, batch=4)),
        ("timing", dict(cfg_name="baseline", native=True, amp=True, batch=4)),
        ("profile", dict(cfg_name="optimized", native=True)),
        ("profile", dict(cfg_name="baseline", native=True)),
    ]
    for what, args in cases:
        t = time.time()
        e = {**env, "CUDA_LAUNCH_BLOCKING": "1"} if what == "step" else env
        r = subprocess.run([sys.executable, __file__, what, json.dumps(args)], capture_output=True, text=True, env=e, timeout=120)
        tail = r.stdout.strip() if r.returncode == 0 else "FAILED\n" + "\n".join(r.stderr.strip().splitlines()[-14:])
        print(f"### {what} {args} ({time.time() - t:.0f} s)\n{tail}\n", flush=True)
