"""The per-job report: its typed record (``schema``, torch- and matplotlib-free, for the HTTP
service), and ``report.html`` with its PNG figures (``write``)."""
