"""How many programs of a compiled kernel an SM holds at once (registers, shared memory,
threads, block slots): the co-residency that the split variant's barrier depends on."""


def programs_per_sm(regs: int, shared: int, num_warps: int, regs_per_sm: int = 65536,
                    smem_per_sm: int = 233472, threads_per_sm: int = 2048,
                    max_blocks_per_sm: int = 32) -> int:
    # Registers are allocated per warp in units of 256 (8 per thread).
    regs_per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256
    by_regs = regs_per_sm // (regs_per_warp * num_warps)
    by_smem = smem_per_sm // shared if shared else max_blocks_per_sm
    by_threads = threads_per_sm // (32 * num_warps)
    return min(by_regs, by_smem, by_threads, max_blocks_per_sm)


def driver_programs_per_sm(compiled):
    """The driver's own figure for a loaded kernel (cuOccupancyMaxActiveBlocksPerMultiprocessor:
    what this context may hold, which MPS or a partition can make less than the formula), or
    None where the driver cannot be asked."""
    import ctypes
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        blocks = ctypes.c_int()
        status = lib.cuOccupancyMaxActiveBlocksPerMultiprocessor(
            ctypes.byref(blocks), ctypes.c_void_p(compiled.function),
            ctypes.c_int(32 * compiled.metadata.num_warps),
            ctypes.c_size_t(compiled.metadata.shared))
    except (OSError, AttributeError, TypeError):
        return None
    return blocks.value if status == 0 else None


def device_capacity(compiled, device) -> int:
    """Programs of `compiled` (a Triton CompiledKernel) that `device` holds at once: the
    formula above on the device's limits, or the driver's figure where that is lower."""
    import torch
    compiled._init_handles()  # loads the binary: n_regs is known from then on
    props = torch.cuda.get_device_properties(device)
    per_sm = programs_per_sm(
        compiled.n_regs, compiled.metadata.shared, compiled.metadata.num_warps,
        regs_per_sm=getattr(props, "regs_per_multiprocessor", 65536),
        smem_per_sm=getattr(props, "shared_memory_per_multiprocessor", 233472),
        threads_per_sm=getattr(props, "max_threads_per_multi_processor", 2048))
    driver = driver_programs_per_sm(compiled)
    if driver is not None:
        per_sm = min(per_sm, driver)
    return per_sm * props.multi_processor_count
