"""ACPI tables for the guest: how it finds its CPUs, interrupt controllers,
devices, PM timer, and the registers that power it off and reset it."""

from .platform import AcpiPlatform, AcpiTables, build_acpi_tables

__all__ = ["AcpiPlatform", "AcpiTables", "build_acpi_tables"]
