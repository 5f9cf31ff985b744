"""The qemu target: local virtual machines under QEMU (``vm``, ``state``, ``accel``, ``qmp``,
``cidata``), booting what ``provision build`` wrote (``artifact``), as a cluster provider
(``provider``)."""
