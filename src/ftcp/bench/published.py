"""The paper's published numbers (Tables I-V), transcribed as data.

Source: L. Alvisi, T. C. Bressoud, A. El-Khashab, K. Marzullo, D. Zagorodnov,
"Wrapping Server-Side TCP to Mask Connection Failures", Proc. IEEE INFOCOM
2001, section V ("Performance"), Tables I-V. Values are copied digit for
digit; nothing is derived here except in the helper functions, which say so.

Units as published: throughput and its error bound in KB/s (the paper does not
define KB; `ftcp bench paper` uses 1 KB = 1024 bytes), latency and its error
bound in ms, ack count summed over the 12 runs of each configuration
(Table I-III text: "Note the reduced number of acknowledgments over the 12
runs"). The paper's "Error Bound" is its 95% confidence bound.

Note the Clean row is the same in Tables I-III: the paper measured unwrapped
TCP once (client and server on the 10 Mbit/s Ethernet) and reused it.
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = (
    'L. Alvisi, T. C. Bressoud, A. El-Khashab, K. Marzullo, D. Zagorodnov, "Wrapping '
    'Server-Side TCP to Mask Connection Failures", Proc. IEEE INFOCOM 2001, section V, '
    "Tables I-V."
)
RUNS = 12  # runs per configuration behind Tables I-IV
RECOVERY_RUNS = 20  # runs behind Table V
TRANSFER_BYTES = 1 << 20  # "a 1MB transfer from client to server"
KB = 1024  # bytes per KB used when comparing with the paper (the paper does not say)

TOPOLOGIES = ("10-10", "10-shared", "10-100")
CONFIGS = ("Clean", "Lazy", "Lazy64k", "Eager", "Conditional")
TABLE_OF = {"10-10": "I", "10-shared": "II", "10-100": "III"}
TITLE_OF = {"10-10": "10-10", "10-shared": "10 Shared", "10-100": "10-100"}


@dataclass(frozen=True, slots=True)
class PerfRow:
    """One row of Tables I-III."""

    throughput_kBps: float
    throughput_err_kBps: float
    pct_of_clean: float
    latency_ms: float
    latency_err_ms: float
    ack_count: int  # total over RUNS runs

    @property
    def acks_per_run(self) -> float:
        """Derived: `ack_count / RUNS`."""
        return self.ack_count / RUNS


# Tables I, II, III: {topology: {configuration: row}}
PERFORMANCE: dict[str, dict[str, PerfRow]] = {
    "10-10": {  # Table I, 10-10 PERFORMANCE
        "Clean": PerfRow(1007.69, 0.53, 100.00, 5.82, 3.39, 3064),
        "Lazy": PerfRow(241.33, 0.76, 23.95, 27.75, 17.23, 1766),
        "Lazy64k": PerfRow(488.08, 3.26, 48.44, 44.89, 29.75, 555),
        "Eager": PerfRow(722.84, 1.16, 71.73, 56.70, 35.77, 12810),
        "Conditional": PerfRow(651.02, 2.50, 64.61, 53.96, 58.46, 3276),
    },
    "10-shared": {  # Table II, 10 SHARED PERFORMANCE
        "Clean": PerfRow(1007.69, 0.53, 100.00, 5.82, 3.39, 3064),
        "Lazy": PerfRow(195.17, 3.79, 19.37, 29.15, 20.75, 2100),
        "Lazy64k": PerfRow(321.20, 1.39, 31.88, 72.06, 43.92, 559),
        "Eager": PerfRow(338.50, 0.60, 33.59, 89.35, 108.13, 12946),
        "Conditional": PerfRow(343.41, 0.73, 34.08, 89.47, 92.73, 3515),
    },
    "10-100": {  # Table III, 10-100 PERFORMANCE
        "Clean": PerfRow(1007.69, 0.53, 100.00, 5.82, 3.39, 3064),
        "Lazy": PerfRow(1007.56, 0.57, 99.99, 5.86, 3.14, 3082),
        "Lazy64k": PerfRow(929.92, 3.91, 92.28, 17.48, 22.84, 1267),
        "Eager": PerfRow(969.84, 0.31, 96.24, 5.31, 3.23, 11687),
        "Conditional": PerfRow(985.84, 0.38, 97.83, 6.03, 3.30, 5833),
    },
}

# The paper's R^2 remark (section V-B): every pooled fit had R^2 >= 0.99 except one.
R2_NOTE = "R² ≥ 0.99 for every fit except Lazy on 10 Shared (0.83)"
R2_EXCEPTION = ("10-shared", "Lazy", 0.83)


@dataclass(frozen=True, slots=True)
class NagleRow:
    """One row of Table IV: throughput (KB/s) with the logger's Nagle on / off."""

    nagle_on_kBps: float
    nagle_off_kBps: float
    change_pct: float  # as published (rounded to 0.1%)


# Table IV, LOGGER NAGLE DISABLED PERFORMANCE (rows in the paper's order)
NAGLE: dict[str, dict[str, NagleRow]] = {
    "10-100": {
        "Clean": NagleRow(1007.69, 1007.69, 0.0),
        "Lazy": NagleRow(1007.56, 1007.42, 0.0),
        "Lazy64k": NagleRow(929.92, 896.20, -3.6),
        "Eager": NagleRow(969.84, 969.11, -0.1),
        "Conditional": NagleRow(985.84, 987.32, 0.2),
    },
    "10-10": {
        "Clean": NagleRow(1007.69, 1007.69, 0.0),
        "Lazy": NagleRow(241.33, 494.22, 104.8),
        "Lazy64k": NagleRow(488.08, 501.08, 2.7),
        "Eager": NagleRow(722.84, 514.72, -28.8),
        "Conditional": NagleRow(651.02, 506.92, -22.1),
    },
    "10-shared": {
        "Clean": NagleRow(1007.69, 1007.69, 0.0),
        "Lazy": NagleRow(195.17, 368.53, 88.8),
        "Lazy64k": NagleRow(321.20, 321.52, 0.1),
        "Eager": NagleRow(338.50, 274.23, -19.0),
        "Conditional": NagleRow(343.41, 312.72, -8.9),
    },
}


@dataclass(frozen=True, slots=True)
class RecoveryRow:
    """One row of Table V (20 runs, 1 MB logged)."""

    restart_ms: float
    restart_err_ms: float
    replay_s: float
    replay_err_s: float
    read_ms: float
    read_err_ms: float


# Table V, RECOVERY MEASUREMENTS; "local" = logger on the server's machine
RECOVERY: dict[str, RecoveryRow] = {
    "10-10": RecoveryRow(17.31, 0.02, 2.571, 0.00201, 1.893, 0.0015),
    "10-100": RecoveryRow(22.21, 13.31, 0.485, 0.00036, 0.338, 0.0003),
    "local": RecoveryRow(22.44, 14.08, 0.056, 0.00025, 0.039, 0.0002),
}
# "local-nice": the same local logger, run 10 nice levels ahead (not in the paper; its
# published values are Local's)
RECOVERY["local-nice"] = RECOVERY["local"]
RECOVERY_SETUPS = ("10-10", "10-100", "local", "local-nice")
LOGGER_NICE = {"local-nice": -10}  # the logger's nice value per setup (default 0)

# The paper's hardware (section V-A), for the report's "machine" comparison.
PAPER_MACHINES = (
    "server: 450 MHz Pentium II, 128 MB, Linux 2.0.36 with the FT-TCP modules; "
    "client and logger: 300 MHz Pentium II, 64 MB, Linux 2.2; client on a 10 Mbit/s "
    "PCMCIA Ethernet card; tcpdump on the client"
)
