"""ACPI tables for the guest: how it finds its CPUs, interrupt controllers,
PM timer, and the registers that power it off and reset it."""

from .description import AcpiPlatform, AcpiTables, SerialPort, build_acpi_tables

__all__ = ["AcpiPlatform", "AcpiTables", "SerialPort", "build_acpi_tables"]
