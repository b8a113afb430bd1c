"""crmflow: a real-time CRM trigger engine and customer feature store."""

__version__ = "0.1.0"
