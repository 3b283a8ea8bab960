"""NWB reading and writing of condition-averaged rates (pynwb is an optional dependency)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mechscope_population.data import NeuralData

_MISSING = "reading/writing NWB files needs pynwb: pip install 'mechscope[nwb]' (or pynwb)"


def _pynwb() -> Any:
    try:
        import pynwb
    except ImportError:
        raise ImportError(_MISSING) from None
    return pynwb


def write(data: NeuralData, path: str | Path, *, name: str) -> None:
    """Write `data` as a processing module: a TimeSeries ``rates`` and a ``conditions`` table.

    The TimeSeries has NWB's time-first layout ``[time, condition, neuron]``; the table has
    one row per condition with ``label_*`` and ``event_*`` columns.
    """
    pynwb = _pynwb()
    from hdmf.common import DynamicTable, VectorData

    nwbfile = pynwb.NWBFile(
        session_description="condition-averaged rates written by mechscope",
        identifier=f"mechscope-{Path(path).stem}",
        session_start_time=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC),
    )
    module = nwbfile.create_processing_module(name=name, description="condition × time × neuron")
    module.add(
        pynwb.TimeSeries(
            name="rates",
            data=np.transpose(data.rates, (1, 0, 2)),
            timestamps=data.times,
            unit="spikes/s",
            description="rates [time, condition, neuron]",
        )
    )
    columns = [
        VectorData(name=f"label_{k}", data=np.asarray(v), description=f"label {k}")
        for k, v in data.labels.items()
    ] + [
        VectorData(name=f"event_{k}", data=np.asarray(v), description=f"event {k} (s)")
        for k, v in data.events.items()
    ]
    if data.neuron_ids is not None:
        module.add(
            DynamicTable(
                name="neurons",
                description="neuron ids",
                columns=[
                    VectorData(
                        name="id_value", data=np.asarray(data.neuron_ids), description="neuron id"
                    )
                ],
            )
        )
    module.add(
        DynamicTable(
            name="conditions",
            description="one row per condition",
            id=np.arange(data.n_conditions),
            columns=columns,
        )
    )
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)


def read(path: str | Path, *, name: str) -> NeuralData:
    """Read a file written by :func:`write`."""
    from mechscope_population.data import NeuralData

    pynwb = _pynwb()
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        if name not in nwbfile.processing:
            raise ValueError(
                f"{path} has no processing module '{name}'; modules: "
                f"{', '.join(nwbfile.processing) or 'none'}"
            )
        module = nwbfile.processing[name]
        series = module["rates"]
        rates = np.transpose(np.asarray(series.data[:]), (1, 0, 2))
        times = np.asarray(series.timestamps[:])
        table = module["conditions"]
        labels, events = {}, {}
        for column in table.columns:
            values = np.asarray(column.data[:])
            if column.name.startswith("label_"):
                labels[column.name[6:]] = values
            elif column.name.startswith("event_"):
                events[column.name[6:]] = values.astype(np.float64)
        ids = None
        if "neurons" in module.data_interfaces:
            ids = np.asarray(module["neurons"]["id_value"].data[:])
    return NeuralData(rates=rates, times=times, labels=labels, events=events, neuron_ids=ids)
