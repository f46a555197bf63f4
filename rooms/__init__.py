"""Room workers: the business service between the ingress streams and the room streams."""

from rooms.worker import RoomWorker as RoomWorker
