"""The audit trail arrives with the audit issue."""
