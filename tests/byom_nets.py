"""Small faithful re-implementations of the networks users bring (torchvision does not import here):
a bottleneck ResNet (torchvision layout: conv1/bn1/relu, layer1.., downsample, avgpool, fc), a MobileNetV2
(inverted residuals, depthwise 3x3, ReLU6, linear bottlenecks, features/classifier), a block with
squeeze-and-excitation, and a net that concatenates branches. Tests copy this file into a temporary
folder as the user's own module."""
import torch
from torch import nn
import torch.nn.functional as F

class Bottleneck(nn.Module):
    expansion = 4
    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False); self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False); self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False); self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    def forward(self, x):
        idt = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            idt = self.downsample(x)
        out += idt
        return self.relu(out)

class BottleneckResNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, widths=(8, 16), blocks=(1, 1)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False); self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], 16
        for i, (w, n) in enumerate(zip(widths, blocks)):
            seq = []
            for j in range(n):
                seq.append(Bottleneck(cin, w, 2 if (j == 0 and i > 0) else 1)); cin = w * 4
            layers.append(nn.Sequential(*seq))
        self.layer1, self.layer2 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        h = cin * t
        self.use_res = stride == 1 and cin == cout
        layers = []
        if t != 1:
            layers += [nn.Conv2d(cin, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
                   nn.Conv2d(h, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)

class MobileNetV2(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, width_mult=0.25, last=128):
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)]
        c = lambda v: max(8, int(v * width_mult + 4) // 8 * 8)
        cin = c(32)
        feats = [nn.Sequential(nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True))]
        for t, ch, n, s in cfg:
            for i in range(n):
                feats.append(InvertedResidual(cin, c(ch), s if i == 0 else 1, t)); cin = c(ch)
        feats.append(nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)

class SEBlock(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Linear(c, max(4, c // r)); self.fc2 = nn.Linear(max(4, c // r), c)
    def forward(self, x):
        s = x.mean((2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s.view(s.size(0), s.size(1), 1, 1)

class SENet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.se = SEBlock(16)
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)
    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.se(self.conv(x)))
        x = self.down(x)
        return self.fc(x.mean((2, 3)))

class ConcatNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.tail = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)
    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b2(x)], 1)
        x = self.tail(self.pool(x))
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def make_concat(**kw):
    """A factory function (not a class): recipes may call it only with --allow-import."""
    return ConcatNet(**kw)


def not_a_model(**kw):
    return 3
