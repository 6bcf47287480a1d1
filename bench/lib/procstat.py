"""CPU time and resident memory of a process from /proc, shared by the benchmark scripts."""
import os

CLK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    """User + system CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces or parentheses: split after the last ")".
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK


def rss_mib(pid):
    """Resident set size in MiB (0 once the process is gone)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
