"""Datasets: MS-COCO 2014 caption layout reading (ranke.data.coco) and the demo world (ranke.data.demo)."""
