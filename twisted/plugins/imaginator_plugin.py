from twisted.application.service import ServiceMaker

imaginator = ServiceMaker(
    "imaginator", "imaginator.tap", "Build OS and application images from manifests.", "imaginator"
)
