"""Machine, CPU and GPU facts: for meta.json, the device_name column, the runner's memory pre-check and the
children's environment.

Importing this package imports no torch: the runner parent and the fork server must stay CUDA-clean; the few
functions that need torch (gpu_info, nvml_handle, cuda_available, cuda_count) import it when called.
- machine: time, CPU model/features, cores, RAM, package versions, git commit
- gpu: NVML (one initialiser: `nvml_init`, or `with nvml()`), CUDA index/handle, device names and free memory
- jetson: board, power mode, board power source
- record: `environment(argv)`, the meta.json "env" record
"""
from bench.env.gpu import (cuda_available, cuda_count, cuda_env, cuda_index, device_name, free_memory_bytes,
                           gpu_info, gpus, nvml, nvml_handle, nvml_init)
from bench.env.jetson import is_jetson, jetson_info, jetson_power_source, nvpmodel_mode
from bench.env.machine import cpu_isa, cpu_name, free_ram_bytes, now_iso, physical_cores, usable_cpus
from bench.env.record import environment

__all__ = ["cpu_isa", "cpu_name", "cuda_available", "cuda_count", "cuda_env", "cuda_index", "device_name",
           "environment", "free_memory_bytes", "free_ram_bytes", "gpu_info", "gpus", "is_jetson", "jetson_info",
           "jetson_power_source", "now_iso", "nvml", "nvml_handle", "nvml_init", "nvpmodel_mode", "physical_cores",
           "usable_cpus"]
